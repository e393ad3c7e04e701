// SPDX-License-Identifier: GPL-2.0
/*
 * pokelab_ops: up to two ftrace_ops, registered and unregistered on demand,
 * so that pokelab can watch the fentry site move between NOP, an ops'
 * trampoline and the list function.
 *
 *   echo "register N FUNC" > /sys/kernel/debug/pokelab_ops/control
 *   echo "unregister N"    > /sys/kernel/debug/pokelab_ops/control
 *   cat /sys/kernel/debug/pokelab_ops/counts     # "opsN <registered> <calls>"
 *
 * ops0 is a plain ops; ops1 asks for FTRACE_OPS_FL_SAVE_REGS where the
 * architecture can give it.
 *
 * With CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS (x86_64) there is also a
 * direct-call trampoline, pokelab_direct_tramp (in this module, like the
 * kernel's samples/ftrace/ftrace-direct*.c), that only counts its calls:
 *
 *   echo "direct on FUNC" > /sys/kernel/debug/pokelab_ops/control
 *   echo "direct off"     > /sys/kernel/debug/pokelab_ops/control
 *   # counts: "direct <registered> <calls>"
 *
 * Alone on FUNC, its fentry site goes NOP <-> "call pokelab_direct_tramp".
 * Before 6.6 the ops API is register_ftrace_direct_multi(ops, addr); since
 * 6.6 (da8bdfbd4223 "ftrace: Rename _ftrace_direct_multi APIs to
 * _ftrace_direct APIs") the same function is register_ftrace_direct(ops, addr)
 * and unregister_ftrace_direct(ops, addr, free_filters).
 *
 * Read against include/linux/ftrace.h of 6.1, 6.12 and 7.3 (Debian's
 * linux-headers-7.3.4+deb13-common): ftrace_func_t (ip, parent_ip, op, fregs),
 * FTRACE_OPS_FL_SAVE_REGS, ftrace_set_filter/ftrace_free_filter and the
 * direct API above are unchanged through 7.3; it builds without a warning
 * for all three (orchestrator/kmod.py fails a build that warns).
 */
#include <linux/module.h>
#include <linux/ftrace.h>
#include <linux/debugfs.h>
#include <linux/seq_file.h>
#include <linux/mutex.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/atomic.h>
#include <linux/version.h>
#include <linux/linkage.h>

#define NR_OPS 2

struct pokelab_ops {
	struct ftrace_ops ops;
	atomic64_t calls;
	bool registered;
};

static struct pokelab_ops pops[NR_OPS];
static DEFINE_MUTEX(pops_lock);
static struct dentry *dir;


static void notrace pokelab_func(unsigned long ip, unsigned long parent_ip,
				 struct ftrace_ops *op, struct ftrace_regs *fregs)
{
	struct pokelab_ops *p = container_of(op, struct pokelab_ops, ops);

	atomic64_inc(&p->calls);
}

static int pokelab_register(int n, const char *func)
{
	struct pokelab_ops *p = &pops[n];
	int ret;

	if (p->registered)
		return -EBUSY;
	memset(&p->ops, 0, sizeof(p->ops));
	p->ops.func = pokelab_func;
#ifdef CONFIG_DYNAMIC_FTRACE_WITH_REGS
	if (n == 1)
		p->ops.flags = FTRACE_OPS_FL_SAVE_REGS;
#endif
	ret = ftrace_set_filter(&p->ops, (unsigned char *)func, strlen(func), 1);
	if (ret)
		goto free;
	ret = register_ftrace_function(&p->ops);
	if (ret)
		goto free;
	atomic64_set(&p->calls, 0);
	p->registered = true;
	return 0;
free:
	ftrace_free_filter(&p->ops);
	return ret;
}

static int pokelab_unregister(int n)
{
	struct pokelab_ops *p = &pops[n];
	int ret;

	if (!p->registered)
		return -ENOENT;
	ret = unregister_ftrace_function(&p->ops);
	if (ret)
		return ret;
	ftrace_free_filter(&p->ops);
	p->registered = false;
	return 0;
}

#if defined(CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS) && defined(CONFIG_X86_64)
#define POKELAB_DIRECT 1
#include <asm/ibt.h>
#include <asm/nospec-branch.h>

#ifndef CALL_DEPTH_ACCOUNT
#define CALL_DEPTH_ACCOUNT ""
#endif

/* incremented by the trampoline (lock incq): its calls */
long pokelab_direct_calls;
extern void pokelab_direct_tramp(void);

/* called from the fentry site before the function's frame: touches no register but flags */
asm (
"	.pushsection	.text, \"ax\", @progbits\n"
"	.type		pokelab_direct_tramp, @function\n"
"	.globl		pokelab_direct_tramp\n"
"   pokelab_direct_tramp:"
	ASM_ENDBR
"	pushq %rbp\n"
"	movq %rsp, %rbp\n"
	CALL_DEPTH_ACCOUNT
"	lock incq pokelab_direct_calls(%rip)\n"
"	leave\n"
	ASM_RET
"	.size		pokelab_direct_tramp, .-pokelab_direct_tramp\n"
"	.popsection\n"
);

static struct ftrace_ops direct_ops;
static bool direct_registered;

static int pokelab_direct_on(const char *func)
{
	int ret;

	if (direct_registered)
		return -EBUSY;
	memset(&direct_ops, 0, sizeof(direct_ops));
	ret = ftrace_set_filter(&direct_ops, (unsigned char *)func, strlen(func), 1);
	if (ret)
		goto free;
	WRITE_ONCE(pokelab_direct_calls, 0);
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 6, 0)
	ret = register_ftrace_direct(&direct_ops, (unsigned long)pokelab_direct_tramp);
#else
	ret = register_ftrace_direct_multi(&direct_ops, (unsigned long)pokelab_direct_tramp);
#endif
	if (ret)
		goto free;
	direct_registered = true;
	return 0;
free:
	ftrace_free_filter(&direct_ops);
	return ret;
}

static int pokelab_direct_off(void)
{
	int ret;

	if (!direct_registered)
		return -ENOENT;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 6, 0)
	ret = unregister_ftrace_direct(&direct_ops, (unsigned long)pokelab_direct_tramp, false);
#else
	ret = unregister_ftrace_direct_multi(&direct_ops, (unsigned long)pokelab_direct_tramp);
#endif
	if (ret)
		return ret;
	ftrace_free_filter(&direct_ops);
	direct_registered = false;
	return 0;
}
#else
static int pokelab_direct_on(const char *func) { return -EOPNOTSUPP; }
static int pokelab_direct_off(void) { return -EOPNOTSUPP; }
#endif

static ssize_t control_write(struct file *file, const char __user *ubuf,
			     size_t count, loff_t *ppos)
{
	char buf[160], func[128];
	int n, ret;

	if (count >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, count))
		return -EFAULT;
	buf[count] = '\0';

	mutex_lock(&pops_lock);
	if (sscanf(buf, "register %d %127s", &n, func) == 2 && n >= 0 && n < NR_OPS)
		ret = pokelab_register(n, func);
	else if (sscanf(buf, "unregister %d", &n) == 1 && n >= 0 && n < NR_OPS)
		ret = pokelab_unregister(n);
	else if (sscanf(buf, "direct on %127s", func) == 1)
		ret = pokelab_direct_on(func);
	else if (strncmp(buf, "direct off", 10) == 0)
		ret = pokelab_direct_off();
	else
		ret = -EINVAL;
	mutex_unlock(&pops_lock);
	return ret ? ret : count;
}

static const struct file_operations control_fops = {
	.owner = THIS_MODULE,
	.write = control_write,
	.llseek = noop_llseek,
};

static int counts_show(struct seq_file *m, void *v)
{
	int n;

	mutex_lock(&pops_lock);
	for (n = 0; n < NR_OPS; n++)
		seq_printf(m, "ops%d %d %lld\n", n, pops[n].registered,
			   (long long)atomic64_read(&pops[n].calls));
#ifdef POKELAB_DIRECT
	seq_printf(m, "direct %d %ld\n", direct_registered, READ_ONCE(pokelab_direct_calls));
#endif
	mutex_unlock(&pops_lock);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(counts);

static int __init pokelab_ops_init(void)
{
	dir = debugfs_create_dir("pokelab_ops", NULL);
	if (IS_ERR(dir))
		return PTR_ERR(dir);
	debugfs_create_file("control", 0200, dir, NULL, &control_fops);
	debugfs_create_file("counts", 0444, dir, NULL, &counts_fops);
	return 0;
}

static void __exit pokelab_ops_exit(void)
{
	int n;

	debugfs_remove_recursive(dir);
	mutex_lock(&pops_lock);
	for (n = 0; n < NR_OPS; n++)
		if (pops[n].registered)
			pokelab_unregister(n);
#ifdef POKELAB_DIRECT
	if (direct_registered)
		pokelab_direct_off();
#endif
	mutex_unlock(&pops_lock);
}

module_init(pokelab_ops_init);
module_exit(pokelab_ops_exit);
MODULE_DESCRIPTION("pokelab: ftrace_ops registered on demand");
MODULE_LICENSE("GPL");
