/* Shared by the guest test programs in guest_src, which the guest kit compiles with -I here. */
#ifndef VHS_H
#define VHS_H

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The value of NAME=VALUE on the kernel command line (decimal, 0x hex), or def. */
static long vhs_param(const char *name, long def)
{
	char buf[4096];
	int fd = open("/proc/cmdline", O_RDONLY);
	if (fd < 0)
		return def;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return def;
	buf[n] = 0;
	char key[128];
	snprintf(key, sizeof(key), "%s=", name);
	for (char *p = buf; (p = strstr(p, key)) != NULL; p++) {
		if (p == buf || p[-1] == ' ')
			return strtol(p + strlen(key), NULL, 0);
	}
	return def;
}

#endif
