// Preloaded (--import, with --expose-gc) into the shaperrd the soak measures: on SIGUSR2 a full garbage
// collection, then the memory figures on stderr, so RSS is read without the garbage not yet collected.
process.on('SIGUSR2', () => {
  globalThis.gc();
  process.stderr.write(`soak-memory ${JSON.stringify(process.memoryUsage())}\n`);
});
