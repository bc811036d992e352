/*
 * The testbed's delay line: the kernel here has no netem, and Node's timers jitter by as much as the
 * delays they would have to keep. Two TUN devices, each in its own network namespace; every IP packet
 * read from one is written to the other once its delay has passed.
 *
 *   delay-line [--default MS] [--queue PACKETS] [--realtime PRIORITY] NETNS-A DEVICE-A NETNS-B DEVICE-B [ADDRESS=MS ...]
 *
 * NETNS-x is a namespace path (/var/run/netns/NAME). A device that exists is attached to (ip tuntap
 * add ... mode tun makes one that outlives this program); one that does not is created and vanishes when
 * the program ends. Both are brought up. The delay of a packet is that of the first table entry naming
 * its destination, else its source, else the default (0): an entry names a far-side host, so its packets
 * wait that long in both directions and its round trip grows by twice the entry. MS may have decimals.
 *
 * Packets wait in one FIFO per direction and table entry: within one, deadlines only grow, so the
 * earliest deadline is always at a head. The program sleeps in ppoll() until the next deadline or a
 * packet, with a 1 ns timer slack so that it wakes on time. A full FIFO drops the packet and counts it.
 * --realtime runs it under SCHED_FIFO at that priority: on a busy 2-core machine an ordinary (even a
 * niced) process woke up to 6 ms late, a SCHED_FIFO one under 1 ms; it only ever runs for the few µs a
 * packet takes, so it cannot starve the machine.
 *
 * stdout: "ready" once both devices are up; a "stats ..." line on SIGUSR1 and on SIGTERM/SIGINT, after
 * which it exits 0. Errors: one line on stderr, exit 1 (64 for bad arguments).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_ENTRIES 64
/* Big enough for any packet a TUN device without vnet headers hands over; larger ones are dropped. */
#define SLOT_BYTES 2048
#define READ_BYTES 65536
/* Packets read per device per wake-up, so that one busy direction cannot starve the other's deadlines. */
#define READ_BATCH 64

struct entry {
  int family; /* AF_INET or AF_INET6 */
  unsigned char address[16];
  int64_t delay_ns;
};

struct fifo {
  unsigned char *data; /* capacity slots of SLOT_BYTES, allocated at the first packet */
  uint16_t *length;
  int64_t *deadline;
  unsigned head, count;
};

static struct entry table[MAX_ENTRIES];
static int entries;
static int64_t default_delay_ns;
static unsigned capacity = 1024;
/* fifos[direction][entry]; entry == entries is the default. */
static struct fifo fifos[2][MAX_ENTRIES + 1];

static struct {
  uint64_t forwarded, dropped_full, dropped_oversize, dropped_unknown, write_errors;
  int64_t late_max_ns, late_sum_ns;
} stats;

static void fail(const char *format, ...) {
  va_list args;
  va_start(args, format);
  fputs("delay-line: ", stderr);
  vfprintf(stderr, format, args);
  fputc('\n', stderr);
  va_end(args);
  exit(1);
}

static void usage(const char *problem) {
  fprintf(stderr, "delay-line: %s\nusage: delay-line [--default MS] [--queue PACKETS] [--realtime PRIORITY] NETNS-A DEVICE-A NETNS-B DEVICE-B [ADDRESS=MS ...]\n", problem);
  exit(64);
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t parse_ms(const char *text, const char *what) {
  char *end;
  errno = 0;
  double ms = strtod(text, &end);
  if (errno || end == text || *end || !(ms >= 0 && ms <= 60000)) {
    char problem[160];
    snprintf(problem, sizeof problem, "%s: \"%s\" is not a delay in ms between 0 and 60000", what, text);
    usage(problem);
  }
  return (int64_t)(ms * 1e6 + 0.5);
}

static void parse_entry(const char *text) {
  if (entries == MAX_ENTRIES) usage("too many ADDRESS=MS entries (at most 64)");
  const char *equals = strrchr(text, '=');
  char address[64];
  if (!equals || (size_t)(equals - text) >= sizeof address) usage("a table entry must read ADDRESS=MS");
  memcpy(address, text, equals - text);
  address[equals - text] = 0;
  struct entry *entry = &table[entries];
  entry->family = strchr(address, ':') ? AF_INET6 : AF_INET;
  if (inet_pton(entry->family, address, entry->address) != 1) {
    char problem[128];
    snprintf(problem, sizeof problem, "\"%s\" is not an IPv4 or IPv6 address", address);
    usage(problem);
  }
  entry->delay_ns = parse_ms(equals + 1, address);
  entries++;
}

/* The table entry for a packet (entries: the default); -1 when it is not an IP packet. */
static int classify(const unsigned char *packet, size_t length) {
  int family;
  const unsigned char *source, *destination;
  size_t size;
  if (length >= 20 && packet[0] >> 4 == 4) {
    family = AF_INET, source = packet + 12, destination = packet + 16, size = 4;
  } else if (length >= 40 && packet[0] >> 4 == 6) {
    family = AF_INET6, source = packet + 8, destination = packet + 24, size = 16;
  } else {
    return -1;
  }
  for (int i = 0; i < entries; i++)
    if (table[i].family == family && !memcmp(table[i].address, destination, size)) return i;
  for (int i = 0; i < entries; i++)
    if (table[i].family == family && !memcmp(table[i].address, source, size)) return i;
  return entries;
}

static void enqueue(struct fifo *fifo, const unsigned char *packet, size_t length, int64_t deadline) {
  if (!fifo->data) {
    fifo->data = malloc((size_t)capacity * SLOT_BYTES);
    fifo->length = malloc(capacity * sizeof *fifo->length);
    fifo->deadline = malloc(capacity * sizeof *fifo->deadline);
    if (!fifo->data || !fifo->length || !fifo->deadline) fail("out of memory for a queue of %u packets", capacity);
  }
  if (fifo->count == capacity) {
    stats.dropped_full++;
    return;
  }
  unsigned slot = (fifo->head + fifo->count) % capacity;
  memcpy(fifo->data + (size_t)slot * SLOT_BYTES, packet, length);
  fifo->length[slot] = (uint16_t)length;
  fifo->deadline[slot] = deadline;
  fifo->count++;
}

/* Writes every packet whose deadline has passed; returns the earliest deadline still waiting (INT64_MAX: none). */
static int64_t release_due(const int device[2]) {
  int64_t next = INT64_MAX;
  for (int direction = 0; direction < 2; direction++) {
    for (int e = 0; e <= entries; e++) {
      struct fifo *fifo = &fifos[direction][e];
      while (fifo->count) {
        int64_t deadline = fifo->deadline[fifo->head];
        int64_t now = now_ns();
        if (deadline > now) {
          if (deadline < next) next = deadline;
          break;
        }
        if (write(device[!direction], fifo->data + (size_t)fifo->head * SLOT_BYTES, fifo->length[fifo->head]) < 0)
          stats.write_errors++;
        else
          stats.forwarded++;
        int64_t late = now - deadline;
        stats.late_sum_ns += late;
        if (late > stats.late_max_ns) stats.late_max_ns = late;
        fifo->head = (fifo->head + 1) % capacity;
        fifo->count--;
      }
    }
  }
  return next;
}

/* Reads what device `direction` has (at most READ_BATCH packets) into that direction's FIFOs. */
static void read_packets(int fd, int direction) {
  static unsigned char packet[READ_BYTES];
  for (int i = 0; i < READ_BATCH; i++) {
    ssize_t length = read(fd, packet, sizeof packet);
    if (length < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      fail("reading device %c: %s", 'A' + direction, strerror(errno));
    }
    int64_t arrived = now_ns();
    if (length > SLOT_BYTES) {
      stats.dropped_oversize++;
      continue;
    }
    int e = classify(packet, (size_t)length);
    if (e < 0) {
      stats.dropped_unknown++;
      continue;
    }
    enqueue(&fifos[direction][e], packet, (size_t)length, arrived + (e < entries ? table[e].delay_ns : default_delay_ns));
  }
}

static void print_stats(void) {
  uint64_t sent = stats.forwarded + stats.write_errors;
  printf("stats forwarded=%llu dropped_full=%llu dropped_oversize=%llu dropped_unknown=%llu write_errors=%llu late_max_us=%.1f late_mean_us=%.1f\n",
         (unsigned long long)stats.forwarded, (unsigned long long)stats.dropped_full, (unsigned long long)stats.dropped_oversize,
         (unsigned long long)stats.dropped_unknown, (unsigned long long)stats.write_errors, stats.late_max_ns / 1e3,
         sent ? stats.late_sum_ns / 1e3 / sent : 0.0);
  fflush(stdout);
}

/* Enters the namespace at `path`, attaches to (or creates) TUN device `name` there and brings it up. */
static int open_device(const char *path, const char *name) {
  int ns = open(path, O_RDONLY | O_CLOEXEC);
  if (ns < 0) fail("opening namespace %s: %s", path, strerror(errno));
  if (setns(ns, CLONE_NEWNET) < 0) fail("entering namespace %s: %s", path, strerror(errno));
  close(ns);
  // The device belongs to the namespace the file is opened in, so open it only now.
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) fail("opening /dev/net/tun: %s", strerror(errno));
  struct ifreq request = {0};
  if (strlen(name) >= IFNAMSIZ) fail("device name %s is longer than %d characters", name, IFNAMSIZ - 1);
  strcpy(request.ifr_name, name);
  request.ifr_flags = IFF_TUN | IFF_NO_PI;
  if (ioctl(fd, TUNSETIFF, &request) < 0) fail("attaching to TUN device %s in %s: %s", name, path, strerror(errno));
  int control = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (control < 0 || ioctl(control, SIOCGIFFLAGS, &request) < 0) fail("reading the flags of %s: %s", name, strerror(errno));
  request.ifr_flags |= IFF_UP;
  if (ioctl(control, SIOCSIFFLAGS, &request) < 0) fail("bringing %s up: %s", name, strerror(errno));
  close(control);
  return fd;
}

int main(int argc, char **argv) {
  int arg = 1;
  for (; arg < argc && !strncmp(argv[arg], "--", 2); arg += 2) {
    if (arg + 1 >= argc) usage("an option needs a value");
    if (!strcmp(argv[arg], "--default")) {
      default_delay_ns = parse_ms(argv[arg + 1], "--default");
    } else if (!strcmp(argv[arg], "--queue")) {
      char *end;
      unsigned long packets = strtoul(argv[arg + 1], &end, 10);
      if (*end || packets < 1 || packets > 65536) usage("--queue takes a number of packets between 1 and 65536");
      capacity = (unsigned)packets;
    } else if (!strcmp(argv[arg], "--realtime")) {
      char *end;
      long priority = strtol(argv[arg + 1], &end, 10);
      if (*end || priority < 1 || priority > 99) usage("--realtime takes a SCHED_FIFO priority between 1 and 99");
      struct sched_param parameters = {.sched_priority = (int)priority};
      if (sched_setscheduler(0, SCHED_FIFO, &parameters) < 0) fail("SCHED_FIFO priority %ld: %s", priority, strerror(errno));
    } else {
      usage("unknown option");
    }
  }
  if (argc - arg < 4) usage("expected two namespaces and their devices");
  for (int i = arg + 4; i < argc; i++) parse_entry(argv[i]);

  // Signals arrive through a descriptor, so that ppoll() below is the only place the program waits.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGUSR1);
  if (sigprocmask(SIG_BLOCK, &signals, NULL) < 0) fail("blocking signals: %s", strerror(errno));
  int signal_fd = signalfd(-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC);
  if (signal_fd < 0) fail("signalfd: %s", strerror(errno));
  // The default 50 µs slack would let every wake-up run late by up to that much.
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);

  int device[2] = {open_device(argv[arg], argv[arg + 1]), open_device(argv[arg + 2], argv[arg + 3])};
  puts("ready");
  fflush(stdout);

  struct pollfd polled[3] = {{.fd = device[0], .events = POLLIN}, {.fd = device[1], .events = POLLIN}, {.fd = signal_fd, .events = POLLIN}};
  for (;;) {
    int64_t next = release_due(device);
    struct timespec timeout, *wait = NULL;
    if (next != INT64_MAX) {
      int64_t left = next - now_ns();
      if (left < 0) left = 0;
      timeout.tv_sec = left / 1000000000;
      timeout.tv_nsec = left % 1000000000;
      wait = &timeout;
    }
    if (ppoll(polled, 3, wait, NULL) < 0) {
      if (errno == EINTR) continue;
      fail("ppoll: %s", strerror(errno));
    }
    for (int direction = 0; direction < 2; direction++) {
      if (polled[direction].revents & (POLLERR | POLLHUP | POLLNVAL)) fail("device %s went away", argv[arg + 1 + 2 * direction]);
      if (polled[direction].revents & POLLIN) read_packets(device[direction], direction);
    }
    if (polled[2].revents & POLLIN) {
      struct signalfd_siginfo info;
      while (read(signal_fd, &info, sizeof info) == sizeof info) {
        print_stats();
        if (info.ssi_signo != SIGUSR1) return 0;
      }
    }
  }
}
