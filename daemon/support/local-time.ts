/** The log's timestamps in local time (TZ, e.g. a container's TZ=Europe/Paris), with the offset from UTC. */

const twoDigits = (value: number) => String(value).padStart(2, '0');

/** 2026-12-07T12:07:53.123+05:30: what an operator's clock says, and unambiguous across a DST change. */
export function localIsoTime(date = new Date()): string {
  const offsetMinutes = -date.getTimezoneOffset();
  const wallClock = new Date(date.getTime() + offsetMinutes * 60_000).toISOString().slice(0, -1);
  const magnitude = Math.abs(offsetMinutes);
  return `${wallClock}${offsetMinutes < 0 ? '-' : '+'}${twoDigits(Math.floor(magnitude / 60))}:${twoDigits(magnitude % 60)}`;
}

/** pino's `timestamp` option: the "time" field as local ISO time instead of milliseconds since 1970. */
export const localTimeField = (): string => `,"time":"${localIsoTime()}"`;
