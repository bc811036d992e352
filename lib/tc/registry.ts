/**
 * Typed views of the kind registry (kinds/registry.ts): which kinds play which role, their option,
 * parameter and statistics types, and lookup by name for the generic request, decoding and tc layers.
 */
import { ShaperrInputError } from '../wire/errors.js';
import type { AnyFilterKind, AnyTcKind, KindEntry, Role } from './kind.js';
import * as registry from './kinds/registry.js';

type Registry = typeof registry;
type KindName = keyof Registry;

/** The kinds that play `role`. */
export type KindNameWith<R extends Role> = { [K in KindName]: Registry[K] extends { readonly [P in R]: unknown } ? K : never }[KindName];
export type QdiscKindName = KindNameWith<'qdisc'>;
export type ClassKindName = KindNameWith<'class'>;
export type FilterKindName = KindNameWith<'filter'>;

type RoleOf<R extends Role, K extends KindNameWith<R>> = Registry[K] extends { readonly [P in R]: infer Kind } ? Kind : never;
/** What callers write for kind `K` in role `R`. */
export type OptionsOf<R extends Role, K extends KindNameWith<R>> = RoleOf<R, K> extends { resolve(input: infer I, ...rest: never[]): unknown } ? I : never;
/** What a dump reads back for kind `K` in role `R`. */
export type ParametersOf<R extends Role, K extends KindNameWith<R>> = RoleOf<R, K> extends { read(...args: never[]): infer P } ? P : never;
/** The kind's extended statistics in role `R` (never when it has none). */
export type ExtendedStatsOf<R extends Role, K extends KindNameWith<R>> = RoleOf<R, K> extends { readExtendedStats?(payload: Uint8Array): infer E } ? E : never;

/** A plain map: looking up a module namespace object was a visible part of building every request. */
const entries = new Map<string, KindEntry>(Object.entries(registry as Record<string, KindEntry>));

function entry(name: string): KindEntry | undefined {
  return entries.get(name);
}

/** The kind playing `role` under this name, or undefined (e.g. a dump showing a kind we do not speak). */
export function knownKind(role: 'filter', name: string | undefined): AnyFilterKind | undefined;
export function knownKind(role: Role, name: string | undefined): AnyTcKind | undefined;
export function knownKind(role: Role, name: string | undefined): AnyTcKind | undefined {
  return name === undefined ? undefined : entry(name)?.[role];
}

/** Like knownKind, but a name we do not know is the caller's mistake: one error listing what is supported. */
export function kindFor(role: 'filter', name: string): AnyFilterKind;
export function kindFor(role: Role, name: string): AnyTcKind;
export function kindFor(role: Role, name: string): AnyTcKind {
  const found = knownKind(role, name);
  if (found) return found;
  const supported = [...entries].filter(([, candidate]) => candidate[role] !== undefined).map(([candidate]) => candidate);
  throw new ShaperrInputError(`unknown ${role} kind ${JSON.stringify(name)}: supported are ${supported.join(', ')}`);
}

/** Every registered kind name with the roles it plays (for tests and docs). */
export const registeredKinds = (): Array<[string, KindEntry]> => [...entries];

/**
 * The kind a filter ref with a handle but no kind is taken to be: u32, whose handles were the only ones
 * before filters had a registry (a ref names one filter by kind and handle, as tc does).
 */
export const DEFAULT_FILTER_KIND = 'u32' satisfies FilterKindName;
