// Evaluates flags of a published flagd flag set with @openfeature/flagd-core, the JavaScript
// evaluator that flagd's Node and web providers use in-process. The tests compare it with the
// Python one (openfeature-flagd-core) on every flag canary: see tests/flagd.py.
//
//   node tests/js/evaluate.mjs FLAG_SET.json FLAG [DEFAULT_JSON]
//       evaluates FLAG for the 10,000 targeting keys user-0 ... user-9999 (the type follows
//       DEFAULT_JSON, `false` when left out) and prints {"evaluator", "results": {key: value}}
//   node tests/js/evaluate.mjs FLAG_SET.json < REQUEST.json
//       REQUEST is {"contexts": {name: {"targetingKey": ..., attributes...}},
//                   "evaluations": [{"flag": ..., "type": "boolean|string|number|object", "default": ...}],
//                   "metadata": false};
//       without "contexts", the 10,000 keys. Prints {"evaluator", "results": {flag: {name: resolution}}},
//       each resolution {"value", "variant", "reason", "errorCode"}, and "flagMetadata" when
//       "metadata" is true.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { FlagdCore } from '@openfeature/flagd-core';

const require = createRequire(import.meta.url);
const VERSION = require('@openfeature/flagd-core/package.json').version;
const KEYS = 10_000;

// Warnings about the document go to stderr, so stdout stays one JSON document.
const logger = {
  debug() {},
  info() {},
  warn: (...args) => console.error('flagd-core:', ...args),
  error: (...args) => console.error('flagd-core:', ...args),
};

function defaultContexts() {
  const contexts = {};
  for (let index = 0; index < KEYS; index += 1) {
    contexts[`user-${index}`] = { targetingKey: `user-${index}` };
  }
  return contexts;
}

function typeOf(value) {
  return value !== null && typeof value === 'object' ? 'object' : typeof value;
}

function resolveAll(core, evaluation, contexts, withMetadata) {
  const results = {};
  for (const [name, context] of Object.entries(contexts)) {
    const resolved = core.resolve(evaluation.type, evaluation.flag, evaluation.default, context, logger);
    results[name] = {
      value: resolved.value,
      variant: resolved.variant ?? null,
      reason: resolved.reason ?? null,
      errorCode: resolved.errorCode ?? null,
    };
    if (withMetadata) {
      results[name].flagMetadata = resolved.flagMetadata ?? {};
    }
  }
  return results;
}

function main(argv) {
  const [path, flag, defaultJson] = argv;
  if (!path) {
    console.error('usage: node evaluate.mjs FLAG_SET.json [FLAG [DEFAULT_JSON]] (or a request on stdin)');
    return 2;
  }
  const core = new FlagdCore(undefined, logger);
  core.setConfigurations(readFileSync(path, 'utf-8'));
  if (flag) {
    const fallback = defaultJson === undefined ? false : JSON.parse(defaultJson);
    const evaluation = { flag, type: typeOf(fallback), default: fallback };
    const resolved = resolveAll(core, evaluation, defaultContexts(), false);
    const values = Object.fromEntries(Object.entries(resolved).map(([key, r]) => [key, r.value]));
    process.stdout.write(JSON.stringify({ evaluator: `@openfeature/flagd-core ${VERSION}`, results: values }));
    return 0;
  }
  const request = JSON.parse(readFileSync(0, 'utf-8'));
  const contexts = request.contexts ?? defaultContexts();
  const results = {};
  for (const evaluation of request.evaluations) {
    results[evaluation.flag] = resolveAll(core, evaluation, contexts, request.metadata === true);
  }
  process.stdout.write(JSON.stringify({ evaluator: `@openfeature/flagd-core ${VERSION}`, results }));
  return 0;
}

process.exitCode = main(process.argv.slice(2));
