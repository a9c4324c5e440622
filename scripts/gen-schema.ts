/**
 * Writes the artefacts generated from the zod config schema: the JSON Schema editors use
 * (schema/agent-config.schema.json) and the settings table of docs/configuration.md.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { z } from 'zod';
import { withReference } from '../src/config/reference.js';
import { agentConfigSchema } from '../src/config/schema.js';

const root = new URL('../../', import.meta.url);
writeFileSync(new URL('schema/agent-config.schema.json', root), `${JSON.stringify(z.toJSONSchema(agentConfigSchema, { io: 'input' }), null, 2)}\n`);
const docs = new URL('docs/configuration.md', root);
const before = readFileSync(docs, 'utf8');
const after = withReference(before);
if (after !== before) writeFileSync(docs, after);
