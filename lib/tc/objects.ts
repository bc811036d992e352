/**
 * The typed object layer in one import: public types (types.ts), requests (encode.ts), read-back
 * (decode.ts) and tc command lines (tc-command.ts), each over the kind registry (registry.ts).
 */
export * from './decode.js';
export * from './encode.js';
export * from './tc-command.js';
export * from './types.js';
