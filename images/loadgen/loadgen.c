/*
 * pokelab load generator: a tight loop over one kernel path, for pinning on
 * the vCPUs that must run the code being patched.
 *
 *   loadgen getpid [SECONDS]   syscall(SYS_getpid) in a loop
 *   loadgen read   [SECONDS]   read(2) of 1 byte from /dev/zero in a loop
 *   loadgen yield  [SECONDS]   sched_yield(2) in a loop (scheduler paths: update_curr)
 *
 * An optional third argument N/US paces the loop: after every N iterations it
 * sleeps US microseconds, or with US = 0 executes one PAUSE.  Under
 * single-threaded TCG a busy vCPU answers an IPI only at its next turn, which
 * makes every text_poke_bp (three IPI rounds) ~70 times slower; QEMU ends a
 * vCPU's turn at PAUSE ("just let another CPU run", target/i386 helper_pause),
 * so N/0 keeps the load busy while IPIs are answered at once.
 *
 * It runs until SIGTERM/SIGINT or SECONDS (0: forever) and then prints
 * "loadgen <path> cpu=<cpu> iterations=<n>" on stdout, so a scenario can
 * tell that the load really ran.  Built statically on the host.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[1] : "getpid";
	double seconds = argc > 2 ? atof(argv[2]) : 0;
	unsigned long long n = 0, pace_n = 0;
	long pace_us = 0;
	char byte;
	int fd = -1;
	struct timespec t0, t;

	if (argc > 3 && sscanf(argv[3], "%llu/%ld", &pace_n, &pace_us) != 2) {
		fprintf(stderr, "loadgen: bad pace '%s' (N/US)\n", argv[3]);
		return 2;
	}
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	if (strcmp(path, "read") == 0) {
		fd = open("/dev/zero", O_RDONLY);
		if (fd < 0) { perror("open /dev/zero"); return 2; }
	} else if (strcmp(path, "getpid") != 0 && strcmp(path, "yield") != 0) {
		fprintf(stderr, "loadgen: unknown path '%s' (getpid, read, yield)\n", path);
		return 2;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (!stop) {
		if (fd >= 0)
			(void)!read(fd, &byte, 1);
		else if (path[0] == 'y')
			sched_yield();
		else
			syscall(SYS_getpid);
		++n;
		if (pace_n && n % pace_n == 0) {
			if (pace_us > 0) {
				struct timespec pause = { pace_us / 1000000, (pace_us % 1000000) * 1000 };
				nanosleep(&pause, NULL);
			} else {
				__asm__ volatile("pause");
			}
		}
		if ((n & 0xffff) == 0 && seconds > 0) {
			clock_gettime(CLOCK_MONOTONIC, &t);
			if ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 >= seconds)
				break;
		}
	}
	printf("loadgen %s cpu=%d iterations=%llu\n", path, sched_getcpu(), n);
	return 0;
}
