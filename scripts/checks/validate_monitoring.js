#!/usr/bin/env node
// Validates prometheus-operator objects (ServiceMonitor, PodMonitor, PrometheusRule, ...) against
// the CRD schemas shipped in npm's @kubernetes-models/prometheus-operator, which
// kubernetes-validate does not know. Reads one multi-document YAML file (or "-" for stdin) and
// exits 1 naming every object that fails; prints one line per object that passes.
//
// Two checks per object: the model's own `validate()` (types, enums, patterns, required fields),
// and a strict one for unknown fields, which `validate()` lets through (the API server would
// silently prune them, so a misspelt field would just vanish). The strict check reads the
// allowed field names from the model's TypeScript declaration (<Kind>.d.ts), which spells out
// the whole CRD schema as nested object types.
//
//   NODE_PATH=... node scripts/checks/validate_monitoring.js rendered-monitoring.yaml
//
// The models are ES modules, which NODE_PATH does not resolve for `import`: each NODE_PATH entry
// is searched by hand and the module imported by its file URL.
'use strict';

const fs = require('fs');
const path = require('path');
const { pathToFileURL } = require('url');
const yaml = require('js-yaml');

const MODEL = '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js';

function findModel() {
  const dirs = (process.env.NODE_PATH || '').split(path.delimiter).filter(Boolean);
  for (const dir of dirs) {
    const file = path.join(dir, MODEL);
    if (fs.existsSync(file)) return file;
  }
  throw new Error(`${MODEL} not found on NODE_PATH (${process.env.NODE_PATH || 'unset'})`);
}

// Parses <Kind>.d.ts into a tree of allowed fields: {keys: Map<name, node|'leaf'>, any: node|'leaf'|null}.
// `[key: string]: ...` is a free-form map (labels, params); a field whose type is not an inline
// object (IObjectMeta, string, Array<string>, ...) is a leaf and not walked into.
function fieldTree(dtsFile) {
  const lines = fs.readFileSync(dtsFile, 'utf8').split('\n');
  const fieldRe = /^\s*(?:"([^"]+)"|\[key: string\])\??: (.*)$/;
  let root = null;
  const stack = [];
  for (const line of lines) {
    if (root === null) {
      if (/^export interface I\w+ \{$/.test(line)) {
        root = { keys: new Map(), any: null };
        stack.push(root);
      }
      continue;
    }
    if (stack.length === 0) break;
    const top = stack[stack.length - 1];
    const m = fieldRe.exec(line);
    if (m) {
      const child = m[2].trimEnd().endsWith('{') ? { keys: new Map(), any: null } : 'leaf';
      if (m[1] === undefined) top.any = child;
      else top.keys.set(m[1], child);
      if (child !== 'leaf') stack.push(child);
    } else if (/^\s*\}/.test(line)) {
      stack.pop();
    }
  }
  if (root === null) throw new Error(`no interface in ${dtsFile}`);
  return root;
}

function unknownFields(value, node, at, out) {
  if (node === 'leaf' || value === null || typeof value !== 'object') return out;
  if (Array.isArray(value)) {
    value.forEach((item, i) => unknownFields(item, node, `${at}/${i}`, out));
    return out;
  }
  for (const [key, child] of Object.entries(value)) {
    const next = node.keys.has(key) ? node.keys.get(key) : node.any;
    if (next === null || next === undefined) out.push(`${at}/${key}`);
    else unknownFields(child, next, `${at}/${key}`, out);
  }
  return out;
}

async function main() {
  const input = process.argv[2];
  if (!input) {
    console.error('usage: validate_monitoring.js FILE|-');
    process.exit(2);
  }
  const text = fs.readFileSync(input === '-' ? 0 : input, 'utf8');
  const modelFile = findModel();
  const models = await import(pathToFileURL(modelFile).href);
  const trees = new Map();

  let failures = 0;
  let checked = 0;
  for (const obj of yaml.loadAll(text)) {
    if (obj === null || obj === undefined) continue;
    const name = `${obj.kind}/${obj.metadata && obj.metadata.name}`;
    const Model = models[obj.kind];
    if (obj.apiVersion !== 'monitoring.coreos.com/v1' || typeof Model !== 'function') {
      console.error(`${name}: not a monitoring.coreos.com/v1 kind this script knows (${obj.apiVersion})`);
      failures += 1;
      continue;
    }
    if (!trees.has(obj.kind)) trees.set(obj.kind, fieldTree(path.join(path.dirname(modelFile), `${obj.kind}.d.ts`)));
    const unknown = unknownFields(obj, trees.get(obj.kind), '', []);
    try {
      new Model(obj).validate();
      if (unknown.length > 0) throw Object.assign(new Error('unknown fields'), { errors: unknown.map((u) => ({ instancePath: u, message: 'unknown field' })) });
      console.log(`ok ${name}`);
    } catch (err) {
      if (Array.isArray(err.errors) && err.errors.length > 0) {
        for (const e of err.errors) console.error(`${name}: ${e.instancePath || '/'}: ${e.message}`);
      } else {
        console.error(`${name}: ${err.message}`);
      }
      failures += 1;
    }
    checked += 1;
  }
  if (failures > 0) {
    console.error(`${failures} invalid monitoring object(s)`);
    process.exit(1);
  }
  console.log(`${checked} monitoring object(s) valid`);
}

main().catch((err) => {
  console.error(err.stack || String(err));
  process.exit(1);
});
