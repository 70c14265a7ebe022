// The dashboard in a real browser: Debian's chromium, headless, driven by
// playwright-core. Signs in, filters the runs, opens a waiting run and its
// journal, cancels it and sees it become CANCELED without a reload, and
// saves screenshots of the main pages to $SCREENSHOTS.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";

const url = process.env.TRIGGER_API_URL;
const key = process.env.TRIGGER_SECRET_KEY;
const waiting = process.env.WAITING_RUN;
const done = process.env.DONE_RUN;
const shots = process.env.SCREENSHOTS;

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  page.setDefaultTimeout(20_000);

  // Signed out, the dashboard asks for a key; a wrong one is refused.
  await page.goto(`${url}/runs`);
  assert.match(page.url(), /\/login$/);
  await page.fill("input[name=key]", "tr_dev_sk_notAKeyOfThisServer000");
  await page.click("button[type=submit]");
  await page.waitForSelector("p.problem");
  await page.fill("input[name=key]", key);
  await Promise.all([page.waitForURL(/\/runs$/), page.click("button[type=submit]")]);

  // Both runs are listed, newest first.
  const listed = await page.$$eval("table.runs tbody tr td:first-child a", (as) => as.map((a) => a.textContent));
  assert.ok(listed.includes(waiting) && listed.includes(done), `listed: ${listed}`);
  await page.screenshot({ path: `${shots}/runs.png`, fullPage: true });

  // Filtering by status leaves only the waiting run.
  await page.selectOption("select[name=status]", "WAITING");
  await Promise.all([page.waitForURL(/status=WAITING/), page.click(".filters button[type=submit]")]);
  const waitingOnly = await page.$$eval("table.runs tbody tr td:first-child a", (as) => as.map((a) => a.textContent));
  assert.deepEqual(waitingOnly, [waiting]);

  // The run's page: its journal, with the snapshot it waits on.
  await Promise.all([page.waitForURL(new RegExp(`/runs/${waiting}$`)), page.click(`a[href="/runs/${waiting}"]`)]);
  const kinds = await page.$$eval("ol.timeline li .kind", (ks) => ks.map((k) => k.textContent));
  for (const kind of ["attempt started", "host call", "waits", "snapshot"]) {
    assert.ok(kinds.includes(kind), `the journal shows a ${kind}: ${kinds}`);
  }
  const badge = `[data-run-status="${waiting}"]`;
  assert.equal(await page.textContent(`h1 ${badge}`), "WAITING");
  // Live updates are connected before the cancel.
  await page.waitForSelector("html[data-live=open]");
  await page.screenshot({ path: `${shots}/run.png`, fullPage: true });

  // Cancel: the status turns CANCELED in place; the page never reloads.
  await page.evaluate(() => { window.kilnNotReloaded = true; });
  await page.click("button[data-action=cancel]");
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent === "CANCELED", `h1 ${badge}`);
  assert.equal(await page.evaluate(() => window.kilnNotReloaded), true, "the page did not reload");
  assert.equal(await page.$("button[data-action=cancel]"), null, "a canceled run has no cancel button");

  // Queues and deployments.
  await page.goto(`${url}/queues`);
  assert.ok((await page.textContent("table.queues")).includes("task/countdown"));
  await page.screenshot({ path: `${shots}/queues.png`, fullPage: true });
  await page.goto(`${url}/deployments`);
  assert.ok((await page.textContent("table.deployments")).includes("current"));
  console.log("dashboard: signed in, filtered, opened a run's journal, canceled it live");
} finally {
  await browser.close();
}
