"""QEMU's back-end program conventions: the command line, capabilities, logging, exit
statuses, and serving one front-end on a listening path or an inherited fd."""
