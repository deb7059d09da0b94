// A C reproducer in the shape of syzbot's of 2022 (syz_mount_image with its image as segments at
// offsets), written for fuselab's tests (tests/test_program.py): it mounts a tiny squashfs image
// through a loop device and reads everything in it.  The image (4 KiB: a directory `dir` with the
// file `hello`, and the symlink `link` to it) was made with squashfs-tools 4.5.1:
//   mksquashfs sq sq.img -noappend -nopad -all-root -mkfs-time 0 -all-time 0 -comp gzip
// Its only non-zero bytes are the 287 at offset 0, written below as one segment.  fuselab's
// image reader takes the image, type and flags from the call; running it mounts and reads.

#define _GNU_SOURCE

#include <dirent.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

struct fs_image_segment {
  void* data;
  uintptr_t size;
  uintptr_t offset;
};

static long syz_mount_image(volatile long fsarg, volatile long dir, volatile unsigned long size,
                            volatile unsigned long nsegs, volatile long segments,
                            volatile long flags, volatile long optsarg)
{
  struct fs_image_segment* segs = (struct fs_image_segment*)segments;
  char loopname[64];
  int memfd = syscall(__NR_memfd_create, "syzkaller", 0);
  if (memfd < 0 || ftruncate(memfd, size))
    return -1;
  for (unsigned long i = 0; i < nsegs; i++)
    if (pwrite(memfd, segs[i].data, segs[i].size, segs[i].offset) < 0)
      return -1;
  int control = open("/dev/loop-control", O_RDWR);
  int n = control < 0 ? -1 : ioctl(control, LOOP_CTL_GET_FREE);
  if (n < 0)
    return -1;
  snprintf(loopname, sizeof(loopname), "/dev/loop%d", n);
  int loopfd = open(loopname, O_RDWR);
  if (loopfd < 0 || ioctl(loopfd, LOOP_SET_FD, memfd))
    return -1;
  mkdir((char*)dir, 0777);
  return mount(loopname, (char*)dir, (char*)fsarg, flags, (char*)optsarg);
}

static void read_all(const char* path)
{
  char buf[4096], child[512];
  DIR* d = opendir(path);
  if (!d) {
    int fd = open(path, O_RDONLY);
    ssize_t got = fd < 0 ? -1 : read(fd, buf, sizeof(buf));
    printf("%s: %zd bytes\n", path, got);
    if (fd >= 0)
      close(fd);
    return;
  }
  for (struct dirent* e; (e = readdir(d));) {
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
      snprintf(child, sizeof(child), "%s/%s", path, e->d_name);
      read_all(child);
    }
  }
  closedir(d);
}

int main(void)
{
  syscall(__NR_mmap, /*addr=*/0x1ffff000ul, /*len=*/0x1000ul, /*prot=*/0ul, /*flags=*/0x32ul, -1, 0ul);
  syscall(__NR_mmap, /*addr=*/0x20000000ul, /*len=*/0x1000000ul, /*prot=*/7ul, /*flags=*/0x32ul, -1, 0ul);
  syscall(__NR_mmap, /*addr=*/0x21000000ul, /*len=*/0x1000ul, /*prot=*/0ul, /*flags=*/0x32ul, -1, 0ul);
  memcpy((void*)0x20000000, "squashfs\000", 9);
  memcpy((void*)0x20000100, "./file0\000", 8);
  *(uint64_t*)0x20000200 = 0x20010000;
  memcpy((void*)0x20010000,
         "\x68\x73\x71\x73\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x01\x00\x00\x00\x01\x00\x11\x00"
         "\xc0\x00\x01\x00\x04\x00\x00\x00\x61\x00\x00\x00\x00\x00\x00\x00\x25\x01\x00\x00\x00\x00\x00\x00"
         "\x1d\x01\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\x73\x00\x00\x00\x00\x00\x00\x00"
         "\xb6\x00\x00\x00\x00\x00\x00\x00\xf4\x00\x00\x00\x00\x00\x00\x00\x0f\x01\x00\x00\x00\x00\x00\x00"
         "\x68\x65\x6c\x6c\x6f\x20\x66\x72\x6f\x6d\x20\x66\x75\x73\x65\x6c\x61\x62\x0a\x41\x00\x78\xda\x63"
         "\x62\x58\xc2\xc8\x00\x05\x4c\x0c\xa8\x40\x18\x88\x19\x19\xde\xc2\xe5\x19\x91\xd4\xc9\x00\x31\x0b"
         "\x10\x33\x33\xfc\x87\xcb\x33\x43\xd5\x70\x02\x71\x4a\x66\x91\x7e\x46\x6a\x4e\x4e\x3e\xb2\x01\x2c"
         "\x48\x0a\xd5\x18\x24\x19\x58\x81\x34\x00\xa0\x69\x07\x9b\x2a\x00\x78\xda\x63\x60\x80\x00\x26\x38"
         "\xcd\xc2\x90\x91\x9a\x93\x93\xcf\x08\x15\x00\xd1\x0a\x60\x9a\x89\x21\x25\xb3\xc8\x01\x48\x31\x03"
         "\x61\x4e\x66\x5e\x36\x00\x6c\xae\x05\x77\x10\x80\x60\x00\x00\x00\x00\x00\x00\x00\x13\x00\x00\x01"
         "\x00\x00\x00\x00\xe2\x00\x00\x00\x00\x00\x00\x00\x11\x00\x78\xda\x53\x60\x40\x05\x0e\x50\x3a\x11"
         "\x4a\x03\x00\x0b\x28\x00\xc2\xfc\x00\x00\x00\x00\x00\x00\x00\x04\x80\x00\x00\x00\x00\x17\x01",
         287);
  *(uint64_t*)0x20000208 = 0x11f;
  *(uint64_t*)0x20000210 = 0;
  *(uint8_t*)0x20000300 = 0;
  // syz_mount_image$squashfs(fs, dir, size, nsegs, segments, flags=MS_RDONLY, opts)
  long res = syz_mount_image(0x20000000, 0x20000100, 0x1000, 1, 0x20000200, 0x1, 0x20000300);
  printf("mount: %ld\n", res);
  if (res == 0)
    read_all("./file0");
  return res == 0 ? 0 : 1;
}
