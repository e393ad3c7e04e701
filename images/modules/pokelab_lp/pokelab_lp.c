// SPDX-License-Identifier: GPL-2.0
/*
 * pokelab_lp: a livepatch (like the kernel's samples/livepatch/livepatch-sample.c)
 * that replaces getpid's body, so that pokelab can watch the fentry site of
 * __x64_sys_getpid (an alias of __do_sys_getpid) go from the NOP to a call of
 * the livepatch ftrace_ops' trampoline (FTRACE_OPS_FL_IPMODIFY:
 * klp_ftrace_handler sends the call to the new body) and back.
 *
 *   insmod pokelab_lp.ko                                  # enables the patch
 *   cat /sys/kernel/livepatch/pokelab_lp/transition       # 0 once every task is patched
 *   cat /sys/module/pokelab_lp/parameters/calls           # calls of the new body
 *   echo 0 > /sys/kernel/livepatch/pokelab_lp/enabled     # unpatch; the directory goes
 *   rmmod pokelab_lp                                      # away when that is done
 *
 * The new body returns what the old one did (task_tgid_vnr(current)) and counts
 * its calls.  Read against include/linux/livepatch.h of 6.1, 6.12 and 7.3
 * (struct klp_func/klp_object/klp_patch, klp_enable_patch()) and the x86
 * syscall wrappers (arch/x86/include/asm/syscall_wrapper.h: SYSCALL_DEFINE0
 * makes __x64_sys_getpid(const struct pt_regs *) an alias of __do_sys_getpid).
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/atomic.h>
#include <linux/moduleparam.h>

struct pt_regs;

static atomic_long_t calls = ATOMIC_LONG_INIT(0);

static int calls_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%ld\n", atomic_long_read(&calls));
}

static const struct kernel_param_ops calls_ops = {
	.get = calls_get,
};
module_param_cb(calls, &calls_ops, NULL, 0444);
MODULE_PARM_DESC(calls, "calls of the patched getpid body");

static long pokelab_lp_getpid(const struct pt_regs *regs)
{
	atomic_long_inc(&calls);
	return task_tgid_vnr(current);
}

static struct klp_func funcs[] = {
	{
		.old_name = "__x64_sys_getpid",
		.new_func = pokelab_lp_getpid,
	}, { }
};

static struct klp_object objs[] = {
	{
		/* name being NULL means vmlinux */
		.funcs = funcs,
	}, { }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int __init pokelab_lp_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit pokelab_lp_exit(void)
{
}

module_init(pokelab_lp_init);
module_exit(pokelab_lp_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("pokelab: a livepatch of getpid that counts its calls");
MODULE_INFO(livepatch, "Y");
