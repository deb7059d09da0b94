// Makes the kernel report a hung task, for fuselab's tests (tests/test_program.py): a C program
// that splats on Debian's default kernel without a kernel bug.  Debian's 7.2 kernel has no fault
// injection in debugfs (no /sys/kernel/debug/fail*, no error_injection) and no lkdtm module, so no
// documented way to a WARNING was found; the hung-task detector is documented instead
// (Documentation/admin-guide/sysctl/kernel.rst, hung_task_timeout_secs): a task that sleeps
// uninterruptibly for longer than that is reported as "INFO: task NAME:PID blocked for more than
// N seconds".  Here: an ext4 image on a loop device is frozen (FIFREEZE, as fsfreeze(8) does), a
// child opens a file for writing on it and sleeps in D state until the parent thaws it (FITHAW)
// 12 seconds later; the timeout is lowered to 3 s so the report comes within seconds.

#define _GNU_SOURCE

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int fail(const char* what)
{
  perror(what);
  return 1;
}

int main(void)
{
  char loopname[64];
  if (system("truncate -s 16M img && mkfs.ext4 -q -F img"))
    return fail("mkfs.ext4");
  int img = open("img", O_RDWR);
  int control = open("/dev/loop-control", O_RDWR);
  int n = control < 0 ? -1 : ioctl(control, LOOP_CTL_GET_FREE);
  if (img < 0 || n < 0)
    return fail("loop-control");
  snprintf(loopname, sizeof(loopname), "/dev/loop%d", n);
  int loop = open(loopname, O_RDWR);
  if (loop < 0 || ioctl(loop, LOOP_SET_FD, img))
    return fail(loopname);
  mkdir("mnt", 0777);
  if (mount(loopname, "mnt", "ext4", 0, NULL))
    return fail("mount");
  int timeout = open("/proc/sys/kernel/hung_task_timeout_secs", O_WRONLY);
  if (timeout < 0 || write(timeout, "3\n", 2) != 2)
    return fail("hung_task_timeout_secs");
  int root = open("mnt", O_RDONLY | O_DIRECTORY);
  if (root < 0 || ioctl(root, FIFREEZE, 0))
    return fail("FIFREEZE");
  pid_t child = fork();
  if (child == 0) {
    int fd = open("mnt/file", O_CREAT | O_WRONLY, 0644);  // waits for the thaw, in D state
    _exit(fd < 0);
  }
  sleep(12);
  if (ioctl(root, FITHAW, 0))
    return fail("FITHAW");
  int status = 0;
  waitpid(child, &status, 0);
  printf("thawed; the writer exited with %d\n", status);
  return 0;
}
