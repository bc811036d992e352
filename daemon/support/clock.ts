/** CLOCK_MONOTONIC in ms: shared by every process on the host (the testbed's peers print it too), never stepped by NTP. */
export const monotonicMs = (): number => Number(process.hrtime.bigint()) / 1e6;
