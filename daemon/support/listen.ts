/**
 * The status page's listen address (`status.listen`): read once by the config, which refuses a page
 * open to other machines without a token, and by the HTTP server that binds it.
 */
import ipaddr from 'ipaddr.js';

export function parseListen(listen: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(listen) ?? /^()()(\d+)$/.exec(listen);
  const port = Number(match?.[3]);
  if (!match || !Number.isInteger(port) || port < 0 || port > 65535)
    throw new Error(`status.listen ${JSON.stringify(listen)}: expected host:port, [v6]:port or a port`);
  return { host: match[1] || match[2] || '127.0.0.1', port };
}

/** Whether a listen address is reachable only from this machine (loopback, or the name localhost). */
export function isLoopbackListen(listen: string): boolean {
  const { host } = parseListen(listen);
  if (host === 'localhost') return true;
  return ipaddr.isValid(host) && ipaddr.process(host).range() === 'loopback';
}
