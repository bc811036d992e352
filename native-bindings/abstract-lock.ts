/**
 * A lock the kernel releases for us: an abstract unix socket bound to a name. Abstract names live per
 * network namespace and vanish with the last descriptor, so a holder killed with -9 never leaves a stale
 * lock, and every process in the namespace (another container sharing it too) sees the same name.
 */
import koffi from 'koffi';
import { check, insideNetns, SyscallError } from './netlink-socket.js';

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
/** sun_path is 108 bytes; the leading NUL of an abstract name is one of them. */
const MAX_NAME = 107;

const libc = koffi.load('libc.so.6');
const sys = {
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  bind: libc.func('int bind(int fd, void *addr, uint32_t addrlen)'),
  close: libc.func('int close(int fd)'),
};

export interface AbstractLock {
  readonly name: string;
  release(): void;
}

/**
 * Binds `name` in the abstract namespace of `netns` (default: this process's). Returns undefined when
 * another process holds it; other failures throw SyscallError.
 */
export function tryAbstractLock(name: string, netns?: string): AbstractLock | undefined {
  const path = Buffer.from(name, 'utf8');
  if (path.length === 0 || path.length > MAX_NAME) throw new Error(`lock name ${JSON.stringify(name)} must be 1 to ${MAX_NAME} bytes`);
  const address = Buffer.alloc(2 + 1 + path.length);
  address.writeUInt16LE(AF_UNIX, 0);
  path.copy(address, 3); // byte 2 stays 0: the abstract namespace
  const bindName = (): number | undefined => {
    const fd = check(sys.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), 'socket');
    if (Number(sys.bind(fd, address, address.length)) === 0) return fd;
    const errno = koffi.errno();
    sys.close(fd);
    if (errno === koffi.os.errno.EADDRINUSE) return undefined;
    throw new SyscallError('bind', errno, `abstract unix socket @${name}`);
  };
  const fd = netns ? insideNetns(netns, bindName) : bindName();
  if (fd === undefined) return undefined;
  let held = true;
  return {
    name,
    release() {
      if (!held) return;
      held = false;
      sys.close(fd);
    },
  };
}
