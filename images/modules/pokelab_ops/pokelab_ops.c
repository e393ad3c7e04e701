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
 */
#include <linux/module.h>
#include <linux/ftrace.h>
#include <linux/debugfs.h>
#include <linux/seq_file.h>
#include <linux/mutex.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/atomic.h>

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
	mutex_unlock(&pops_lock);
}

module_init(pokelab_ops_init);
module_exit(pokelab_ops_exit);
MODULE_DESCRIPTION("pokelab: ftrace_ops registered on demand");
MODULE_LICENSE("GPL");
