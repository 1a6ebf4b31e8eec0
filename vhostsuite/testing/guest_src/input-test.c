/* input-test: describe the guest's virtio-input device and print the events it receives.
 *
 * Run by the guest kit as /bin/input-test (kernel cmdline vhs.run=input-test). Parameters on
 * the kernel cmdline:
 *   vhs.input_events=N   read N events, then print them and exit 0 (default 0: don't read)
 *   vhs.input_led=CODE   write EV_LED CODE 1 + SYN_REPORT to the device (default: LED_CAPSL
 *                        when the device has it; -1: none)
 *   vhs.input_timeout=S  give up reading after S seconds (default 300): exit 3
 *   vhs.input_idle=S     stop reading (and print what was read) when no event came for S
 *                        seconds after the first one (default 10)
 *   vhs.input_linger=S   wait S seconds after printing the events before exiting (default 0)
 *
 * Output lines on stdout (ttyS0), all parseable:
 *   INPUT_DEV=/dev/input/eventN
 *   INPUT_NAME=<name>            INPUT_UNIQ=<serial>
 *   INPUT_ID=<bustype> <vendor> <product> <version>       (hex)
 *   INPUT_PROPS=<hex bytes>       (EVIOCGPROP, trailing zero bytes trimmed)
 *   INPUT_EVBITS <type> <hex bytes>  for type 0 (the event types) and every type with codes
 *   INPUT_ABS <axis> <min> <max> <fuzz> <flat> <resolution>  for every axis (EVIOCGABS)
 *   INPUT_LED_SET <code>
 *   INPUT_READY                   the device is open; events sent from now on are read
 *   EV <type> <code> <value>      one per event read (printed after all N were read)
 *   INPUT_EVENTS_DONE count=N
 * Autorepeat is pushed out (EVIOCSREP 60 s) so held keys don't add repeat events.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/input.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "vhs.h"

#define BITS_BYTES (KEY_MAX / 8 + 1)

/* The event device whose parent is a virtio device. */
static int find_virtio_input(char *path, size_t len)
{
	for (int tries = 0; tries < 100; tries++) {
		DIR *d = opendir("/sys/class/input");
		struct dirent *de;
		while (d && (de = readdir(d)) != NULL) {
			if (strncmp(de->d_name, "event", 5))
				continue;
			char link[PATH_MAX], target[PATH_MAX];
			snprintf(link, sizeof(link), "/sys/class/input/%s/device/device", de->d_name);
			ssize_t n = readlink(link, target, sizeof(target) - 1);
			if (n <= 0)
				continue;
			target[n] = 0;
			if (strstr(target, "virtio")) {
				snprintf(path, len, "/dev/input/%s", de->d_name);
				closedir(d);
				for (int w = 0; w < 100 && access(path, F_OK); w++)
					usleep(50000);
				return 0;
			}
		}
		if (d)
			closedir(d);
		usleep(100000);
	}
	return -1;
}

static void print_bits(const char *prefix, const unsigned char *bits, int n)
{
	while (n > 0 && bits[n - 1] == 0)
		n--;
	printf("%s", prefix);
	for (int i = 0; i < n; i++)
		printf("%02x", bits[i]);
	printf("\n");
}

static int test_bit(const unsigned char *bits, int bit)
{
	return bits[bit / 8] & (1 << (bit % 8));
}

static struct input_event *events;
static long want, got;

static void print_events(void)
{
	for (long i = 0; i < got; i++)
		printf("EV %u %u %d\n", events[i].type, events[i].code, events[i].value);
	fflush(stdout);
}

static void on_alarm(int sig)
{
	(void)sig;
	print_events();
	printf("INPUT_TIMEOUT got=%ld want=%ld\n", got, want);
	fflush(stdout);
	_exit(3);
}

int main(void)
{
	char path[PATH_MAX];
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (find_virtio_input(path, sizeof(path))) {
		printf("INPUT_NODEV\n");
		return 2;
	}
	int fd = open(path, O_RDWR);
	if (fd < 0) {
		printf("INPUT_OPEN_FAIL %s: %s\n", path, strerror(errno));
		return 2;
	}
	printf("INPUT_DEV=%s\n", path);

	char name[256] = "", uniq[256] = "";
	ioctl(fd, EVIOCGNAME(sizeof(name) - 1), name);
	ioctl(fd, EVIOCGUNIQ(sizeof(uniq) - 1), uniq);
	printf("INPUT_NAME=%s\nINPUT_UNIQ=%s\n", name, uniq);
	struct input_id id;
	if (ioctl(fd, EVIOCGID, &id) == 0)
		printf("INPUT_ID=%04x %04x %04x %04x\n", id.bustype, id.vendor, id.product, id.version);
	unsigned char props[INPUT_PROP_CNT / 8 + 1];
	memset(props, 0, sizeof(props));
	ioctl(fd, EVIOCGPROP(sizeof(props)), props);
	print_bits("INPUT_PROPS=", props, sizeof(props));

	unsigned char types[EV_MAX / 8 + 1];
	memset(types, 0, sizeof(types));
	ioctl(fd, EVIOCGBIT(0, sizeof(types)), types);
	print_bits("INPUT_EVBITS 0 ", types, sizeof(types));
	unsigned char absbits[BITS_BYTES];
	memset(absbits, 0, sizeof(absbits));
	for (int t = 1; t <= EV_MAX; t++) {
		unsigned char bits[BITS_BYTES];
		memset(bits, 0, sizeof(bits));
		if (!test_bit(types, t))
			continue;
		int n = ioctl(fd, EVIOCGBIT(t, sizeof(bits)), bits);
		if (n < 0)
			continue; /* EV_REP has no code bitmap */
		char prefix[32];
		snprintf(prefix, sizeof(prefix), "INPUT_EVBITS %d ", t);
		print_bits(prefix, bits, n);
		if (t == EV_ABS)
			memcpy(absbits, bits, sizeof(bits));
	}
	for (int a = 0; a <= ABS_MAX; a++) {
		struct input_absinfo ai;
		if (!test_bit(absbits, a) || ioctl(fd, EVIOCGABS(a), &ai))
			continue;
		printf("INPUT_ABS %d %d %d %d %d %d\n", a, ai.minimum, ai.maximum, ai.fuzz, ai.flat, ai.resolution);
	}

	if (test_bit(types, EV_REP)) {
		unsigned int rep[2] = {60000, 1000};
		ioctl(fd, EVIOCSREP, rep);
	}
	unsigned char leds[LED_MAX / 8 + 1];
	memset(leds, 0, sizeof(leds));
	if (test_bit(types, EV_LED))
		ioctl(fd, EVIOCGBIT(EV_LED, sizeof(leds)), leds);
	long led = vhs_param("vhs.input_led", test_bit(leds, LED_CAPSL) ? LED_CAPSL : -1);
	struct input_event w[2];
	memset(w, 0, sizeof(w));
	w[0].type = EV_LED;
	w[0].code = led;
	w[0].value = 1;
	w[1].type = EV_SYN;
	w[1].code = SYN_REPORT;
	if (led >= 0) {
		if (write(fd, w, sizeof(w)) != sizeof(w))
			printf("INPUT_LED_FAIL %s\n", strerror(errno));
		else
			printf("INPUT_LED_SET %ld\n", led);
	} else if (test_bit(types, EV_REP)) {
		/* flush the EV_REP values EVIOCSREP injected */
		if (write(fd, &w[1], sizeof(w[1])) != sizeof(w[1]))
			printf("INPUT_SYN_FAIL %s\n", strerror(errno));
	}
	/* drain what our own writes produced (EV_LED, EV_REP echoes) */
	usleep(300000);
	int flags = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, flags | O_NONBLOCK);
	struct input_event junk[64];
	while (read(fd, junk, sizeof(junk)) > 0)
		;
	fcntl(fd, F_SETFL, flags);

	want = vhs_param("vhs.input_events", 0);
	events = calloc(want > 0 ? want : 1, sizeof(*events));
	signal(SIGALRM, on_alarm);
	alarm(vhs_param("vhs.input_timeout", 300));
	printf("INPUT_READY\n");
	fflush(stdout);
	long idle_ms = vhs_param("vhs.input_idle", 10) * 1000;
	while (got < want) {
		struct input_event buf[256];
		if (got > 0) {
			struct pollfd pfd = {.fd = fd, .events = POLLIN};
			int r = poll(&pfd, 1, idle_ms);
			if (r == 0) {
				printf("INPUT_IDLE got=%ld want=%ld\n", got, want);
				break;
			}
		}
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			printf("INPUT_READ_FAIL %s\n", strerror(errno));
			return 4;
		}
		for (long i = 0; i < n / (long)sizeof(buf[0]) && got < want; i++)
			events[got++] = buf[i];
	}
	alarm(0);
	print_events();
	printf("INPUT_EVENTS_DONE count=%ld\n", got);
	fflush(stdout);
	sleep(vhs_param("vhs.input_linger", 0)); /* lets the host query the back-end before power-off */
	return 0;
}
