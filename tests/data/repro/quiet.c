// A C program that does not fire, for fuselab's tests (tests/test_program.py): it writes, syncs,
// reads back and removes a file in its scratch directory, and exits 0.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void)
{
  char buf[16] = {0};
  int fd = open("file0", O_CREAT | O_RDWR | O_TRUNC, 0644);
  if (fd < 0 || write(fd, "nothing to see\n", 15) != 15 || fsync(fd) || pread(fd, buf, 15, 0) != 15)
    return 1;
  close(fd);
  unlink("file0");
  printf("read back: %s", buf);
  return strcmp(buf, "nothing to see\n") != 0;
}
