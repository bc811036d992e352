/** The kernel's TCP states (include/net/tcp_states.h): names, and the dump request's state mask. */

/** By number: state 1 is established. */
const tcpStateNames = [
  undefined,
  'established',
  'syn-sent',
  'syn-recv',
  'fin-wait-1',
  'fin-wait-2',
  'time-wait',
  'close',
  'close-wait',
  'last-ack',
  'listen',
  'closing',
  'new-syn-recv',
  'bound-inactive',
] as const;
export type TcpStateName = Exclude<(typeof tcpStateNames)[number], undefined>;
export const TCP_STATES: readonly TcpStateName[] = tcpStateNames.filter((name) => name !== undefined);

/** A state's name; a number this table does not know yet reads as `state N`. */
export const tcpStateName = (state: number): string => tcpStateNames[state] ?? `state ${state}`;

/** idiag_states: bit N selects the sockets in state N. */
export const stateMask = (states: readonly TcpStateName[]): number => states.reduce((mask, state) => mask | (1 << tcpStateNames.indexOf(state)), 0);
