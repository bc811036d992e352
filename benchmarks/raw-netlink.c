/*
 * Reference floor for the benchmarks: sends netlink requests read from a file over a plain NETLINK_ROUTE
 * socket and waits for every ACK. The same bytes shaperr sends, without Node.
 * usage: raw-netlink <netns path> <requests file> [batch bytes]   (prints: <count> <total ns> <failures>)
 * Without batch bytes: one request per send, each waiting for its ACK. With it: requests are packed into
 * one send while the datagram is shorter than batch bytes (at least one each), then all their ACKs are
 * read — the rule shaperr's batches follow, so both send the same messages per sendmsg.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/netlink.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 3 && argc != 4) return 64;
  long batch_bytes = argc == 4 ? atol(argv[3]) : 0;
  int ns = open(argv[1], O_RDONLY);
  if (ns < 0 || setns(ns, CLONE_NEWNET) < 0) { perror("setns"); return 1; }
  FILE *in = fopen(argv[2], "rb");
  if (!in) { perror("open"); return 1; }
  fseek(in, 0, SEEK_END);
  long size = ftell(in);
  rewind(in);
  char *data = malloc(size);
  if (fread(data, 1, size, in) != (size_t)size) return 1;
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  int one = 1, rcvbuf = 8 << 20;
  setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf);
  struct sockaddr_nl addr = {.nl_family = AF_NETLINK};
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("bind"); return 1; }
  char reply[65536];
  struct timespec start, end;
  long count = 0, failures = 0;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (long at = 0; at < size;) {
    /* One datagram: this request and, when batching, the following ones while it stays short enough. */
    long from = at;
    unsigned first = (unsigned)count + 1;
    do {
      struct nlmsghdr *message = (struct nlmsghdr *)(data + at);
      message->nlmsg_seq = (unsigned)++count;
      at += NLMSG_ALIGN(message->nlmsg_len);
    } while (at < size && at - from < batch_bytes);
    if (send(fd, data + from, at - from, 0) < 0) { perror("send"); return 1; }
    for (unsigned acked = 0; acked < (unsigned)count + 1 - first;) {
      ssize_t got = recv(fd, reply, sizeof reply, 0);
      if (got < 0) { perror("recv"); return 1; }
      int left = (int)got;
      for (struct nlmsghdr *answer = (struct nlmsghdr *)reply; NLMSG_OK(answer, left); answer = NLMSG_NEXT(answer, left)) {
        if (answer->nlmsg_type != NLMSG_ERROR || answer->nlmsg_seq < first || answer->nlmsg_seq > (unsigned)count) continue;
        if (((struct nlmsgerr *)NLMSG_DATA(answer))->error) failures++;
        acked++;
      }
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &end);
  printf("%ld %lld %ld\n", count, (long long)(end.tv_sec - start.tv_sec) * 1000000000LL + (end.tv_nsec - start.tv_nsec), failures);
  return 0;
}
