// The bundle sizes the library's README reports are the current ones (`npm run sizes`).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { sizes } from '../scripts/sizes.mjs';

test("the README's bundle sizes are this build's", async () => {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  const table = await sizes();
  console.log(table);
  assert.ok(readme.includes(table), `README.md should show, as \`npm run sizes\` prints:\n${table}`);
});
