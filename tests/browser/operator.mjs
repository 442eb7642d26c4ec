// Headless-browser test of the node operator web page, as an operator would use it.
//
//   node tests/browser/operator.mjs --farm-json DIR/farm.json [--screenshot PATH]
//
// Drives Debian's Chromium (/usr/bin/chromium, or $CHROMIUM) through playwright-core against a
// running `dabs farm up --nodes 3` farm (browser.rs keeps calls going to it): the members table
// with its colours, the charts (uPlot series with data, drawn in the members' colours on their
// canvases), a settings change made on one node (the page asks for the operator token from
// farm.json: a wrong one first, which it must refuse, then the right one) seen on another and
// described in the events, a refused value, then node-3 killed (SIGKILL): node-1's page shows
// it as a red DOWN row saying its lease lapsed, screenshots the page, and removes the row with
// its button. Prints one line per check and a closing
// `browser: N passed, M failed`; exits 1 when any check failed. Every wait is bounded, and the
// browser is always closed. Install: `apt-get install chromium` and `npm ci --prefix tests/browser`
// (.ci/run does both).

import { chromium } from 'playwright-core';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const NODES = ['node-1', 'node-2', 'node-3'];
const FARM_WAIT_MS = 20_000; // farm.json with every node's operator URL
const PAGE_WAIT_MS = 10_000; // any one thing on a page
const SPREAD_WAIT_MS = 10_000; // a settings change reaching another node
const CHART_WAIT_MS = 20_000; // charts with a few seconds of calls in them
const CHARTS = ['calls', 'latency', 'load', 'sessions', 'portions'];
const MIN_POINTS = 3; // samples (one a second) the farm's series must have
const BAD_LOW_WATER = 10_000_000;
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const { values: opts } = parseArgs({
  options: {
    'farm-json': { type: 'string' },
    screenshot: { type: 'string' },
    chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
  },
});
if (!opts['farm-json']) {
  console.error('usage: node operator.mjs --farm-json PATH [--screenshot PATH] [--chromium PATH]');
  process.exit(2);
}

let passed = 0;
let failed = 0;
function pass(name, detail = '') {
  passed += 1;
  console.log(`ok   ${name}${detail ? `: ${detail}` : ''}`);
}
function fail(name, detail) {
  failed += 1;
  console.log(`FAIL ${name}: ${detail}`);
}
/**
 * Runs one check. `fn` returns a detail string, or `{ value, detail }` to hand a value to later
 * steps. A failure is recorded and stops the run (the later steps need what this one made).
 */
async function check(name, fn) {
  try {
    const r = await fn();
    const withValue = r !== null && typeof r === 'object' && 'detail' in r;
    pass(name, withValue ? r.detail : (r ?? ''));
    return withValue ? r.value : r;
  } catch (e) {
    fail(name, String(e?.message ?? e).split('\n')[0]);
    throw new Stop();
  }
}
class Stop extends Error {}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` until it returns a truthy value, at most `ms`; throws `what` with the last state. */
async function until(ms, what, probe) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last?.ok) return last.value;
    } catch (e) {
      last = { state: String(e?.message ?? e) };
    }
    if (Date.now() >= deadline) throw new Error(`${what} (after ${ms} ms; last seen: ${JSON.stringify(last?.state)})`);
    await sleep(100);
  }
}

async function getJson(url) {
  const ctl = new AbortController();
  const t = setTimeout(() => ctl.abort(), 3000);
  try {
    const res = await fetch(url, { signal: ctl.signal });
    if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`);
    return await res.json();
  } finally {
    clearTimeout(t);
  }
}

function readFarm(path) {
  if (!existsSync(path)) return { state: 'no farm.json yet' };
  let farm;
  try {
    farm = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    return { state: `unreadable: ${e.message}` };
  }
  const nodes = Array.isArray(farm.nodes) ? farm.nodes : [];
  const byName = Object.fromEntries(nodes.map((n) => [n.name, n]));
  const ready =
    nodes.length === NODES.length &&
    NODES.every((n) => typeof byName[n]?.operator === 'string') &&
    typeof farm.token === 'string';
  return {
    ok: ready,
    value: { byName, token: farm.token },
    state: { token: typeof farm.token, nodes: nodes.map((n) => ({ name: n.name, operator: n.operator })) },
  };
}

/** Opens a node's operator page in a new tab; uncaught page errors are collected. */
async function openPage(context, node, pageErrors) {
  const page = await context.newPage();
  page.setDefaultTimeout(PAGE_WAIT_MS);
  page.on('pageerror', (e) => pageErrors.push(`${node.name}: ${e.message}`));
  const res = await page.goto(node.operator, { timeout: PAGE_WAIT_MS, waitUntil: 'load' });
  if (!res || !res.ok()) throw new Error(`GET ${node.operator}: HTTP ${res ? res.status() : 'no response'}`);
  return page;
}

const spanText = (page, id) => page.locator(`#${id}`).innerText({ timeout: 1000 }).then((t) => t.trim());

async function run(context) {
  const pageErrors = [];
  const { byName: farm, token } = await check('farm.json lists 3 nodes with operator URLs and the token', async () => {
    const value = await until(FARM_WAIT_MS, 'farm.json never listed node-1..3 with "operator", and "token"', () =>
      readFarm(opts['farm-json']),
    );
    return { value, detail: NODES.map((n) => value.byName[n].operator).join(' ') };
  });
  const [n1, n2, n3] = NODES.map((n) => farm[n]);

  const page1 = await check('node-1 page loads', async () => {
    const p = await openPage(context, n1, pageErrors);
    return { value: p, detail: `${n1.operator} "${await p.title()}"` };
  });

  await check('node-1 members table shows node-1, node-2, node-3', () =>
    until(PAGE_WAIT_MS, 'members table incomplete', async () => {
      const shown = await page1.locator('#members tbody tr[data-node]').evaluateAll((rows) =>
        rows.map((r) => r.getAttribute('data-node')),
      );
      return { ok: NODES.every((n) => shown.includes(n)), value: shown.join(', '), state: shown };
    }),
  );

  await check('node-1 members table colours zone, health and accepting', () =>
    until(PAGE_WAIT_MS, 'no coloured zone/accepting/health cells', async () => {
      const rows = await page1.locator('#members tbody tr[data-state="up"]').evaluateAll((rows) =>
        rows.map((r) => ({
          zone: r.querySelector('td.zone .pill')?.className,
          accepting: r.querySelector('td.accepting .pill')?.className,
          health: r.querySelector('td.health')?.className,
          colour: r.querySelector('td.zone .pill') && getComputedStyle(r.querySelector('td.zone .pill')).color,
        })),
      );
      const ok = rows.length === NODES.length && rows.every((r) =>
        / (good|warn|bad)$/.test(r.zone ?? '') && / (good|warn|bad|drain)$/.test(r.accepting ?? '') &&
        /health (good|warn|bad)/.test(r.health ?? '') && r.colour !== 'rgb(28, 32, 38)');
      return { ok, value: `${rows[0]?.zone}, ${rows[0]?.accepting}, ${rows[0]?.colour}`, state: rows };
    }),
  );

  await check('node-1 members table shows each compute server and the job balancer', () =>
    until(PAGE_WAIT_MS, 'no jobs cells', async () => {
      const cells = await page1.locator('#members tbody tr[data-state="up"] td.jobs').allTextContents();
      const ok = cells.length === NODES.length && cells.every((c) => /\d+ done, \d+ queued, [\d.]+ s busy/.test(c)) &&
        cells.filter((c) => / B$/.test(c)).length === 1;
      return { ok, value: cells.join(' | '), state: cells };
    }),
  );

  await check(`node-1 draws ${CHARTS.length} charts with ${MIN_POINTS}+ seconds of every member and calls in them`, () =>
    until(CHART_WAIT_MS, 'the charts have no data yet', async () => {
      const s = await page1.evaluate(({ charts, nodes }) => {
        const plots = window.dabsCharts?.plots;
        if (!plots) return { error: 'no window.dabsCharts' };
        const out = {};
        for (const id of charts) {
          const u = plots.get(id);
          if (!u) return { error: `no ${id} chart` };
          const labels = u.series.map((x) => x.label);
          const points = (i) => (u.data[i] || []).filter((v) => v != null);
          // Series 1 is the farm's; each member's comes after, in name order.
          out[id] = {
            farm: points(1).length,
            max: Math.max(0, ...points(1)),
            members: nodes.filter((n) => labels.some((l) => l && l.startsWith(n))).length,
            canvas: !!u.root.querySelector('canvas'),
          };
        }
        return out;
      }, { charts: CHARTS, nodes: NODES });
      const ok = !s.error && CHARTS.every((id) => s[id].canvas && s[id].farm >= MIN_POINTS && s[id].members === NODES.length) &&
        s.calls.max > 0 && s.latency.max > 0 && s.portions.max >= 1;
      return { ok, value: `calls max ${s.calls?.max?.toFixed?.(1)}/s, p99 max ${s.latency?.max?.toFixed?.(2)} ms, ${s.load?.farm} samples`, state: s };
    }),
  );

  await check('node-1 charts are drawn: each canvas has pixels in the members\' colours', async () => {
    const counts = await page1.evaluate(({ charts }) => {
      const hex = (c) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16));
      const colours = window.dabsCharts.palette.map(hex);
      const out = {};
      for (const id of charts) {
        const canvas = window.dabsCharts.plots.get(id).root.querySelector('canvas');
        const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let n = 0;
        for (let i = 0; i < px.length; i += 4) {
          if (px[i + 3] > 200 && colours.some((c) => Math.abs(c[0] - px[i]) < 24 && Math.abs(c[1] - px[i + 1]) < 24 && Math.abs(c[2] - px[i + 2]) < 24)) n++;
        }
        out[id] = n;
      }
      return out;
    }, { charts: CHARTS });
    const blank = CHARTS.filter((id) => counts[id] < 20);
    if (blank.length) throw new Error(`no series drawn on ${blank.join(', ')}: ${JSON.stringify(counts)}`);
    return JSON.stringify(counts);
  });

  await check('node-1 applications table lists calc, running on the farm', () =>
    until(PAGE_WAIT_MS, 'no calc row in the applications table', async () => {
      const row = page1.locator('#applications tbody tr[data-app="calc"]');
      const cells = (await row.count()) ? await row.locator('td').allTextContents() : [];
      const ok = cells.length >= 3 && cells[1].includes('node-') && Number(cells[2]) >= 1;
      return { ok, value: cells.join(' | '), state: cells };
    }),
  );

  await check('node-1 policies table shows calc, its policy, preferred server and why', () =>
    until(PAGE_WAIT_MS, 'no calc row in the policies table', async () => {
      const row = page1.locator('#policies tbody tr[data-app="calc"]');
      const cells = (await row.count()) ? await row.locator('td').allTextContents() : [];
      const ok = cells.length >= 4 && cells[1] === 'least_loaded' && /^node-\d$/.test(cells[2]) &&
        /node-\d: load \d/.test(cells[3]);
      return { ok, value: cells.slice(0, 4).join(' | '), state: cells };
    }),
  );

  await check('node-1 page shows its counters and the idle-retirement setting', () =>
    until(PAGE_WAIT_MS, 'no counters line or retirement setting', async () => {
      const counters = await spanText(page1, 'node-counters');
      const retire = await spanText(page1, 'setting-retire_idle_after_ms');
      const ok = /\d+ portions retired \(idle\)/.test(counters) && /^\d+$/.test(retire);
      return { ok, value: `${counters} | retire after ${retire} ms`, state: { counters, retire } };
    }),
  );

  // A valid change on node-1.
  const { current, next } = await check('choose a new max_message_latency_ms', async () => {
    const current = await until(PAGE_WAIT_MS, '#setting-max_message_latency_ms shows no number', async () => {
      const t = await spanText(page1, 'setting-max_message_latency_ms');
      return { ok: /^\d+$/.test(t), value: Number(t), state: t };
    });
    const s = await getJson(new URL('/api/settings', n1.operator));
    const low = Number(s.low_water_ms);
    if (!Number.isFinite(low)) throw new Error(`/api/settings has no low_water_ms: ${JSON.stringify(s)}`);
    let next = current + 37;
    if (next > 600_000) next = current - 37; // the page's upper bound
    if (next <= low) next = low + 37;
    return { value: { current, next }, detail: `current ${current}, low_water_ms ${low}, new ${next}` };
  });

  await check('node-1 asks for the operator token when saving', async () => {
    await page1.locator('#max_message_latency_ms').fill(String(next));
    await page1.locator('#save-settings').click();
    await page1.locator('#token-form').waitFor({ state: 'visible', timeout: PAGE_WAIT_MS });
    const t = await spanText(page1, 'token-message');
    if (!/needs the operator token/.test(t)) throw new Error(`#token-message says "${t}"`);
    return `"${t}"`;
  });

  await check('node-1 refuses a wrong token and asks again, saying so', async () => {
    await page1.locator('#operator-token').fill(`${token}-wrong`);
    await page1.locator('#token-submit').click();
    return until(PAGE_WAIT_MS, '#token-message never said the token was wrong', async () => {
      const el = page1.locator('#token-message');
      const t = (await el.innerText({ timeout: 1000 })).trim();
      const isError = await el.evaluate((e) => e.classList.contains('error'));
      const shown = await page1.locator('#token-form').isVisible();
      return { ok: shown && isError && /wrong/.test(t), value: `"${t}"`, state: { text: t, error: isError, shown } };
    });
  });

  await check('nothing changed with the wrong token', async () => {
    const s = await getJson(new URL('/api/settings', n1.operator));
    if (s.max_message_latency_ms !== current) throw new Error(`max_message_latency_ms is ${s.max_message_latency_ms}`);
    return `still ${current}`;
  });

  const savedVersion = await check('node-1 saves the new value with the right token', async () => {
    await page1.locator('#operator-token').fill(token);
    await page1.locator('#token-submit').click();
    const status = await until(PAGE_WAIT_MS, '#settings-status never said "saved"', async () => {
      const t = await spanText(page1, 'settings-status');
      return { ok: /saved/.test(t), value: t, state: t };
    });
    const v = /version\s+(\d+)/.exec(status);
    if (await page1.locator('#token-form').isVisible()) throw new Error('the token form is still shown');
    const kept = await page1.evaluate(() => sessionStorage.getItem('dabs-operator-token'));
    if (kept !== token) throw new Error('the token is not kept for the tab (sessionStorage)');
    return { value: v ? Number(v[1]) : null, detail: `"${status}", token kept for the tab` };
  });

  await check('node-1 swaps calc to fewest_clients from its selector; node-2 has it', async () => {
    await page1.locator('#policies tr[data-app="calc"] select').selectOption('fewest_clients');
    return until(SPREAD_WAIT_MS, 'node-2 never reported calc on fewest_clients', async () => {
      const v = await getJson(new URL('/api/applications/calc/policy', n2.operator));
      const status = await spanText(page1, 'policies-status');
      return { ok: v.policy === 'fewest_clients', value: `node-2: ${v.policy}; page: "${status}"`, state: v };
    });
  });

  await check('node-1 API has the new value', async () => {
    const s = await getJson(new URL('/api/settings', n1.operator));
    if (s.max_message_latency_ms !== next) throw new Error(`max_message_latency_ms ${s.max_message_latency_ms}, want ${next}`);
    return `version ${s.version}`;
  });

  await check('node-1 events say what the change changed, from what to what', () =>
    until(PAGE_WAIT_MS, 'no event describing the change', async () => {
      const want = `max_message_latency_ms ${current} → ${next}`;
      const lines = await page1.locator('#events li').allTextContents();
      const line = lines.find((l) => l.includes(want) && /settings v\d+ made here/.test(l));
      return { ok: !!line, value: `"${line?.trim()}"`, state: lines.slice(0, 3) };
    }),
  );

  // It spreads: node-3's page shows it.
  const page3 = await check('node-3 page loads', async () => {
    const p = await openPage(context, n3, pageErrors);
    return { value: p, detail: n3.operator };
  });

  await check(`node-3 page shows max_message_latency_ms ${next} within ${SPREAD_WAIT_MS / 1000} s`, async () => {
    const t0 = Date.now();
    await until(SPREAD_WAIT_MS, `node-3 still shows the old value (was ${current})`, async () => {
      const t = await spanText(page3, 'setting-max_message_latency_ms');
      return { ok: t === String(next), value: t, state: t };
    });
    let detail = `after ${Date.now() - t0} ms`;
    if (savedVersion != null) {
      const v = await spanText(page3, 'setting-version');
      if (Number(v) < savedVersion) throw new Error(`#setting-version ${v} < saved version ${savedVersion}`);
      detail += `, version ${v}`;
    }
    return detail;
  });

  // A refused value on node-2.
  const page2 = await check('node-2 page loads', async () => {
    const p = await openPage(context, n2, pageErrors);
    return { value: p, detail: n2.operator };
  });

  const before2 = await getJson(new URL('/api/settings', n2.operator)).catch(() => null);
  await check(`node-2 refuses low_water_ms ${BAD_LOW_WATER}`, async () => {
    await page2.locator('#low_water_ms').fill(String(BAD_LOW_WATER));
    await page2.locator('#save-settings').click();
    // Another node is another origin: its page asks for the token once too.
    await page2.locator('#token-form').waitFor({ state: 'visible', timeout: PAGE_WAIT_MS });
    await page2.locator('#operator-token').fill(token);
    await page2.locator('#token-submit').click();
    return until(PAGE_WAIT_MS, '#settings-status did not show an error about low_water_ms', async () => {
      const el = page2.locator('#settings-status');
      const t = (await el.innerText({ timeout: 1000 })).trim();
      const isError = await el.evaluate((e) => e.classList.contains('error'));
      return { ok: isError && t.includes('low_water_ms'), value: `"${t}"`, state: { text: t, error: isError } };
    });
  });

  await check('the refused value changed nothing', async () => {
    const s = await getJson(new URL('/api/settings', n2.operator));
    if (s.low_water_ms === BAD_LOW_WATER) throw new Error(`low_water_ms is ${s.low_water_ms}`);
    if (before2 && s.version !== before2.version) throw new Error(`version went ${before2.version} -> ${s.version}`);
    return `low_water_ms ${s.low_water_ms}, version ${s.version}`;
  });

  // node-3 is killed: it cannot say goodbye, so its lease lapses.
  await check('kill node-3 (SIGKILL)', async () => {
    if (!Number.isInteger(n3.pid)) throw new Error(`farm.json has no pid for node-3: ${JSON.stringify(n3)}`);
    process.kill(n3.pid, 'SIGKILL');
    return `pid ${n3.pid}`;
  });

  await check('node-1 shows node-3 as a red DOWN row: lease lapsed, since when', () =>
    until(PAGE_WAIT_MS, 'no DOWN row for node-3', async () => {
      const row = page1.locator('#members tbody tr[data-node="node-3"]');
      if (!(await row.count())) return { state: 'no node-3 row' };
      const r = await row.evaluate((tr) => ({
        state: tr.dataset.state,
        reason: tr.dataset.reason,
        text: tr.innerText.replace(/\s+/g, ' ').trim(),
        background: getComputedStyle(tr).backgroundColor,
        button: !!tr.querySelector('button[data-remove="node-3"]'),
      }));
      const [red, green, blue] = (r.background.match(/\d+/g) || []).map(Number);
      const ok = r.state === 'down' && r.reason === 'lease_lapsed' && /DOWN/.test(r.text) &&
        /since \d\d:\d\d:\d\d/.test(r.text) && /lease lapsed/.test(r.text) && r.button && red > green && red > blue;
      return { ok, value: `"${r.text}" on ${r.background}`, state: r };
    }),
  );

  await check('node-1 still charts node-1 and node-2 after the kill', async () => {
    // Members sample each second on their own clock: any of the last three seconds will do.
    const live = await page1.evaluate(() => {
      const u = window.dabsCharts.plots.get('load');
      const recent = (col) => col.slice(-3).some((v) => v != null);
      return u.series.slice(1).map((s, i) => [s.label, recent(u.data[i + 1])]).filter(([, r]) => r).map(([l]) => l);
    });
    if (!live.includes('node-1') || !live.includes('node-2')) throw new Error(`recent load samples from ${live.join(', ')}`);
    return `recent load samples from ${live.join(', ')}`;
  });

  if (opts.screenshot) {
    await check('screenshot of node-1 page with its charts and the DOWN row', async () => {
      await page1.screenshot({ path: opts.screenshot, fullPage: true, timeout: PAGE_WAIT_MS });
      return opts.screenshot;
    });
  }

  await check('node-1 removes the DOWN row with its button (the token is kept from the save)', async () => {
    await page1.locator('#members button[data-remove="node-3"]').click();
    await until(PAGE_WAIT_MS, 'the node-3 row is still there', async () => {
      const n = await page1.locator('#members tbody tr[data-node="node-3"]').count();
      return { ok: n === 0, value: n, state: n };
    });
    const farm = await getJson(new URL('/api/farm', n1.operator));
    if (farm.down.length) throw new Error(`/api/farm still lists down ${JSON.stringify(farm.down)}`);
    if (await page1.locator('#token-form').isVisible()) throw new Error('the token form was shown again');
    return 'gone from the page and /api/farm';
  });

  await check('no uncaught JavaScript errors on the pages', async () => {
    if (pageErrors.length) throw new Error(pageErrors.join('; '));
  });
}

let context;
const userDataDir = mkdtempSync(join(tmpdir(), 'dabs-browser-'));
try {
  try {
    context = await check('launch Chromium', async () => {
      if (!existsSync(opts.chromium)) {
        throw new Error(`${opts.chromium} is missing: run .ci/run's install steps (apt-get install chromium)`);
      }
      // launchPersistentContext: the fresh temporary profile is its --user-data-dir.
      const ctx = await chromium.launchPersistentContext(userDataDir, {
        executablePath: opts.chromium,
        headless: true,
        args: CHROMIUM_ARGS,
        timeout: 30_000,
        viewport: { width: 1280, height: 900 },
      });
      return { value: ctx, detail: `${opts.chromium} ${ctx.browser()?.version() ?? ''}`.trim() };
    });
    await run(context);
  } catch (e) {
    if (!(e instanceof Stop)) fail('unexpected error', e?.stack ?? e);
    else console.log('(stopped: the checks after a failed one were not run)');
  }
} finally {
  if (context) await Promise.race([context.close().catch(() => {}), sleep(10_000)]);
  rmSync(userDataDir, { recursive: true, force: true });
}

console.log(`browser: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
