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
 *
 *   loadgen bpf-tailcall ROUNDS PACE_US [HOLD_S]
 *
 * makes the x86 BPF JIT rewrite a direct tail call live (the scenario
 * bpf-tailcall).  With raw bpf(2) calls and hand-assembled instructions it
 * loads two socket filters: "pokelab_tc" does bpf_tail_call(ctx, prog_array,
 * 0) with the constant index 0, which the verifier turns into a poke
 * descriptor and the JIT into a direct jump (arch/x86/net/bpf_jit_comp.c
 * emit_bpf_tail_call_direct: a 5-byte NOP at tailcall_target, a jmp over it
 * at tailcall_bypass), then returns 1; "pokelab_tc_tgt", the target, adds 1
 * to an array map's slot 0 and returns 1.  One child per vCPU 1.. (vCPU 0
 * alone: on 0) sends 1-byte datagrams through an AF_UNIX socketpair whose
 * receiving end has pokelab_tc attached (SO_ATTACH_BPF), so the filter runs
 * on every send.  Once every child has run the filter (at most 20 s), the
 * parent ROUNDS times updates slot 0 of the prog array with the target and
 * deletes it again, sleeping PACE_US microseconds after each (2 * ROUNDS
 * flips), and after an update also until a child has run the filter wholly
 * after it (at most 2 s more): target_runs is then > 0 unless the rewritten
 * jmp was not taken.  Each update and delete makes the kernel rewrite the jmp and the
 * bypass (prog_array_map_poke_run -> bpf_arch_poke_desc_update ->
 * __bpf_arch_text_poke -> text_poke_bp(), smp_text_poke_single() on 6.16+)
 * while the children run that code.  It stops the children and prints
 *
 *   bpf-tailcall flips=<2*ROUNDS> target_runs=<n> filter_runs=<m> children=<c> jited=<A bytes>,<B bytes>
 *
 * (target_runs: the target's count, i.e. how often the patched jmp was
 * taken), then keeps the programs loaded until SIGTERM or HOLD_S seconds
 * (default 300) so that their text can be read back; exit 0.  Any bpf(2)
 * failure is one line on stderr (the verifier's log with it) and exit 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SO_ATTACH_BPF
#define SO_ATTACH_BPF 50
#endif

static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

/* ---------------------------------------------------------------- bpf-tailcall */

#define MAX_CHILDREN 16
/* one struct bpf_insn (include/uapi/linux/bpf.h) */
#define INSN(c, d, s, o, i) ((struct bpf_insn){ .code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i) })
#define MOV64_IMM(d, i) INSN(BPF_ALU64 | BPF_MOV | BPF_K, d, 0, 0, i)
#define MOV64_REG(d, s) INSN(BPF_ALU64 | BPF_MOV | BPF_X, d, s, 0, 0)
#define ADD64_IMM(d, i) INSN(BPF_ALU64 | BPF_ADD | BPF_K, d, 0, 0, i)
#define STX_W(d, s, o) INSN(BPF_STX | BPF_W | BPF_MEM, d, s, o, 0)
#define CALL(f) INSN(BPF_JMP | BPF_CALL, 0, 0, 0, f)
#define JEQ_IMM(d, i, o) INSN(BPF_JMP | BPF_JEQ | BPF_K, d, 0, o, i)
#define ATOMIC_ADD64(d, s, o) INSN(BPF_STX | BPF_DW | BPF_ATOMIC, d, s, o, BPF_ADD)
#define EXIT() INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
/* ld_imm64 of a map fd: two instructions */
#define LD_MAP_FD(d, fd) INSN(BPF_LD | BPF_DW | BPF_IMM, d, BPF_PSEUDO_MAP_FD, 0, fd), INSN(0, 0, 0, 0, 0)

static long sys_bpf(int cmd, union bpf_attr *attr)
{
	return syscall(SYS_bpf, cmd, attr, sizeof(*attr));
}

static int map_create(unsigned type, unsigned value_size)
{
	union bpf_attr a;

	memset(&a, 0, sizeof(a));
	a.map_type = type;
	a.key_size = 4;
	a.value_size = value_size;
	a.max_entries = 1;
	return (int)sys_bpf(BPF_MAP_CREATE, &a);
}

static char verifier_log[65536];

static int prog_load(const char *name, const struct bpf_insn *insns, unsigned n)
{
	union bpf_attr a;
	int fd;

	memset(&a, 0, sizeof(a));
	a.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
	a.insns = (unsigned long)insns;
	a.insn_cnt = n;
	a.license = (unsigned long)"GPL";
	a.log_buf = (unsigned long)verifier_log;
	a.log_size = sizeof(verifier_log);
	a.log_level = 1;
	strncpy(a.prog_name, name, sizeof(a.prog_name) - 1);
	fd = (int)sys_bpf(BPF_PROG_LOAD, &a);
	if (fd < 0)
		fprintf(stderr, "loadgen: bpf(BPF_PROG_LOAD %s): %s; verifier log: %s\n", name, strerror(errno),
			verifier_log);
	return fd;
}

static unsigned jited_len(int fd)
{
	struct bpf_prog_info info;
	union bpf_attr a;

	memset(&info, 0, sizeof(info));
	memset(&a, 0, sizeof(a));
	a.info.bpf_fd = fd;
	a.info.info_len = sizeof(info);
	a.info.info = (unsigned long)&info;
	return sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &a) == 0 ? info.jited_prog_len : 0;
}

static int slot0(int map, int cmd, int prog)
{
	union bpf_attr a;
	unsigned key = 0;

	memset(&a, 0, sizeof(a));
	a.map_fd = map;
	a.key = (unsigned long)&key;
	if (cmd == BPF_MAP_UPDATE_ELEM) {
		a.value = (unsigned long)&prog;
		a.flags = BPF_ANY;
	}
	return (int)sys_bpf(cmd, &a);
}

/* a child on one vCPU: run the filter (one datagram through the socketpair) until SIGTERM */
static void filter_loop(int cpu, int prog, volatile unsigned long long *runs)
{
	cpu_set_t set;
	int sv[2];
	char byte = 'x';

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the parent */
	if (getppid() == 1 || sched_setaffinity(0, sizeof(set), &set) != 0 || socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0 ||
	    setsockopt(sv[1], SOL_SOCKET, SO_ATTACH_BPF, &prog, sizeof(prog)) != 0) {
		fprintf(stderr, "loadgen: bpf-tailcall child on cpu %d: %s\n", cpu, strerror(errno));
		_exit(1);
	}
	while (!stop) {
		(void)!send(sv[0], &byte, 1, MSG_DONTWAIT);
		(void)!recv(sv[1], &byte, 1, MSG_DONTWAIT);
		++*runs;
		__asm__ volatile("pause"); /* TCG: end this vCPU's turn, so IPIs are answered at once */
	}
	_exit(0);
}

static void nap_us(long us)
{
	struct timespec t = { us / 1000000, (us % 1000000) * 1000 };

	nanosleep(&t, NULL);
}

/* every child has counted a filter run */
static int all_ran(volatile unsigned long long *runs, int n)
{
	int i;

	for (i = 0; i < n; i++)
		if (!runs[i])
			return 0;
	return 1;
}

/* wait (at most max_us) until some child has counted two runs more than now: its second send began
 * after this call, so a whole filter run happened after it */
static void wait_run_after(volatile unsigned long long *runs, int n, long max_us)
{
	unsigned long long was[MAX_CHILDREN];
	long waited;
	int i;

	for (i = 0; i < n; i++)
		was[i] = runs[i];
	for (waited = 0; !stop && waited < max_us; waited += 1000) {
		for (i = 0; i < n; i++)
			if (runs[i] >= was[i] + 2)
				return;
		nap_us(1000);
	}
}

static int bpf_tailcall(int argc, char **argv)
{
	long rounds = argc > 2 ? atol(argv[2]) : 0, pace_us = argc > 3 ? atol(argv[3]) : -1;
	long hold_s = argc > 4 ? atol(argv[4]) : 300;
	volatile unsigned long long *runs;
	unsigned long long total = 0, count = 0;
	pid_t kids[MAX_CHILDREN];
	int counter, progs, tc, tgt, ncpu, nkids = 0, i, rc = 0;
	long done = 0;
	unsigned key = 0;
	union bpf_attr a;

	if (rounds < 1 || rounds > 100000 || pace_us < 0 || pace_us > 10000000 || hold_s < 0) {
		fprintf(stderr, "loadgen: usage: loadgen bpf-tailcall ROUNDS(1..100000) PACE_US(0..10000000) "
			"[HOLD_S]\n");
		return 2;
	}
	counter = map_create(BPF_MAP_TYPE_ARRAY, 8);
	progs = map_create(BPF_MAP_TYPE_PROG_ARRAY, 4);
	if (counter < 0 || progs < 0) {
		fprintf(stderr, "loadgen: bpf(BPF_MAP_CREATE): %s\n", strerror(errno));
		return 1;
	}
	{
		struct bpf_insn target[] = {
			MOV64_IMM(BPF_REG_1, 0), STX_W(BPF_REG_10, BPF_REG_1, -4),
			MOV64_REG(BPF_REG_2, BPF_REG_10), ADD64_IMM(BPF_REG_2, -4),
			LD_MAP_FD(BPF_REG_1, counter), CALL(BPF_FUNC_map_lookup_elem),
			JEQ_IMM(BPF_REG_0, 0, 2), MOV64_IMM(BPF_REG_1, 1), ATOMIC_ADD64(BPF_REG_0, BPF_REG_1, 0),
			MOV64_IMM(BPF_REG_0, 1), EXIT(),
		};
		/* r1 (the skb) is passed on as the tail call's context; the index is the constant 0 */
		struct bpf_insn caller[] = {
			LD_MAP_FD(BPF_REG_2, progs), MOV64_IMM(BPF_REG_3, 0), CALL(BPF_FUNC_tail_call),
			MOV64_IMM(BPF_REG_0, 1), EXIT(),
		};

		tgt = prog_load("pokelab_tc_tgt", target, sizeof(target) / sizeof(target[0]));
		tc = prog_load("pokelab_tc", caller, sizeof(caller) / sizeof(caller[0]));
	}
	if (tgt < 0 || tc < 0)
		return 1;
	runs = mmap(NULL, MAX_CHILDREN * sizeof(*runs), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (runs == MAP_FAILED) {
		perror("loadgen: mmap");
		return 1;
	}
	ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
	for (i = ncpu > 1 ? 1 : 0; i < ncpu && nkids < MAX_CHILDREN; i++) {
		pid_t pid = fork();

		if (pid == 0)
			filter_loop(i, tc, &runs[nkids]);
		if (pid < 0) {
			perror("loadgen: fork");
			stop = 1;
			break;
		}
		kids[nkids++] = pid;
	}
	/* every child has run the filter (at most 20 s: under TCG a fork and its first run are slow) */
	for (i = 0; !stop && i < 2000 && !all_ran(runs, nkids); i++)
		nap_us(10000);
	/* done counts flips: an update (NOP -> jmp target, bypass jmp -> NOP), then a delete (back) */
	while (!stop && done < 2 * rounds) {
		int cmd = done % 2 ? BPF_MAP_DELETE_ELEM : BPF_MAP_UPDATE_ELEM;

		if (slot0(progs, cmd, tgt) != 0) {
			fprintf(stderr, "loadgen: bpf(%s prog array slot 0, flip %ld): %s\n",
				done % 2 ? "delete" : "update", done, strerror(errno));
			rc = 1;
			break;
		}
		++done;
		nap_us(pace_us);
		/* after an update: a filter run begun after it (the tail call must reach the target, so
		 * target_runs > 0 says the jmp was taken, not the load's timing); at most 2 s more */
		if (done % 2)
			wait_run_after(runs, nkids, 2000000);
	}
	if (done % 2 && slot0(progs, BPF_MAP_DELETE_ELEM, 0) != 0) /* stopped after an update: empty it */
		rc = 1;
	for (i = 0; i < nkids; i++)
		kill(kids[i], SIGTERM);
	for (i = 0; i < nkids; i++) {
		int status;

		if (waitpid(kids[i], &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
			rc = 1;
		total += runs[i];
	}
	memset(&a, 0, sizeof(a));
	a.map_fd = counter;
	a.key = (unsigned long)&key;
	a.value = (unsigned long)&count;
	if (sys_bpf(BPF_MAP_LOOKUP_ELEM, &a) != 0) {
		fprintf(stderr, "loadgen: bpf(BPF_MAP_LOOKUP_ELEM counter): %s\n", strerror(errno));
		rc = 1;
	}
	printf("bpf-tailcall flips=%ld target_runs=%llu filter_runs=%llu children=%d jited=%u,%u\n",
	       done, count, total, nkids, jited_len(tc), jited_len(tgt));
	fflush(stdout);
	/* keep the programs (and their JITed text) until told to go, for the read-back */
	for (i = 0; !stop && i < hold_s * 10; i++)
		nap_us(100000);
	return rc;
}

int main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[1] : "getpid";
	double seconds = argc > 2 ? atof(argv[2]) : 0;
	unsigned long long n = 0, pace_n = 0;
	long pace_us = 0;
	char byte;
	int fd = -1;
	struct timespec t0, t;

	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	if (strcmp(path, "bpf-tailcall") == 0)
		return bpf_tailcall(argc, argv);
	if (argc > 3 && sscanf(argv[3], "%llu/%ld", &pace_n, &pace_us) != 2) {
		fprintf(stderr, "loadgen: bad pace '%s' (N/US)\n", argv[3]);
		return 2;
	}
	if (strcmp(path, "read") == 0) {
		fd = open("/dev/zero", O_RDONLY);
		if (fd < 0) { perror("open /dev/zero"); return 2; }
	} else if (strcmp(path, "getpid") != 0 && strcmp(path, "yield") != 0) {
		fprintf(stderr, "loadgen: unknown path '%s' (getpid, read, yield, bpf-tailcall)\n", path);
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
