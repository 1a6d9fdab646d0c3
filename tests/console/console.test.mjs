// The web console in a real headless Chromium (Debian's /usr/bin/chromium), driven by
// playwright-core (npm, pinned in tests/console/node/). Started by the Rust test
// `console::the_console_works_in_a_real_headless_chromium`, which runs Warden with the console,
// a guard, an audit log and a knowledge base, and passes:
//   WARDEN_URL, ADMIN_TOKEN, COLLECTION (holds kestrel.md), CHROMIUM_BIN, PLAYWRIGHT_MODULES,
//   and SCREENSHOT_DIR (a PNG of each page goes there).
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(`${process.env.PLAYWRIGHT_MODULES}/`);
const { chromium } = require("playwright-core");

const base = process.env.WARDEN_URL;
const shots = process.env.SCREENSHOT_DIR;
const collection = process.env.COLLECTION;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_BIN,
  headless: true,
  // This machine has no network but loopback: no background fetches, no updates.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const failures = [];
const step = async (name, run) => {
  try {
    await run();
    console.log(`ok ${name}`);
  } catch (err) {
    failures.push(name);
    console.log(`FAILED ${name}: ${err.stack ?? err}`);
  }
};

try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  // Uncaught script errors and content-security refusals; a refused login's 401 is expected.
  const violations = [];
  page.on("pageerror", (error) => violations.push(error.message));
  page.on("console", (message) => {
    if (message.type() === "error" && !message.text().includes("status of 401")) violations.push(message.text());
  });
  const unauthorized = [];
  page.on("response", (response) => {
    if (response.status() === 401) unauthorized.push(response.url());
  });
  page.on("dialog", (dialog) => dialog.accept());
  const shot = (name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });

  await step("login refuses a wrong token and takes the admin token", async () => {
    await page.goto(`${base}/console`);
    await page.fill("#token", "not-the-token");
    await page.click("#login-form button");
    await page.waitForFunction(() => document.querySelector("#login-error").textContent.includes("Not an admin"));
    await shot("login");
    await page.fill("#token", process.env.ADMIN_TOKEN);
    await page.click("#login-form button");
    await page.waitForSelector("#nav:not([hidden])");
    const cookies = await page.context().cookies();
    assert.deepEqual(cookies, [], "no cookie is ever set");
  });

  await step("playground: a chat streams, with its verdicts and sources", async () => {
    await page.click("a[href='#playground']");
    await page.waitForFunction(() => document.querySelector("#play-model").options.length > 0);
    await page.selectOption("#play-collection", collection);
    await page.fill("#play-message", "How do I factory reset my K7 router?");
    await page.click("#play-form button");
    await page.waitForFunction(() => document.querySelector("#play-finish").textContent === "stop");
    assert.ok((await page.textContent("#play-answer")).length > 0);
    assert.equal(await page.textContent("#play-input"), "safe");
    assert.equal(await page.textContent("#play-output"), "safe");
    const sources = await page.$$eval("#play-sources tbody tr", (rows) => rows.map((r) => r.cells[1].textContent));
    assert.ok(sources.includes("kestrel.md"), `sources: ${sources}`);
    await shot("playground");
  });

  await step("playground: a blocked question shows the input verdict", async () => {
    await page.fill("#play-message", "How do I hotwire a car?");
    await page.click("#play-form button");
    await page.waitForFunction(() => document.querySelector("#play-finish").textContent === "content_filter");
    assert.equal(await page.textContent("#play-input"), "blocked (S2)");
  });

  await step("audit: the blocked request is there, with its content", async () => {
    await page.click("a[href='#audit']");
    await page.selectOption("#audit-form select[name=decision]", "blocked");
    await page.click("#audit-form button");
    await page.waitForSelector("#audit-table tbody tr[data-verdict=blocked]");
    const row = await page.$eval("#audit-table tbody tr", (r) => Array.from(r.cells).map((c) => c.textContent));
    assert.equal(row[7], "blocked");
    assert.equal(row[8], "S2");
    assert.match(row[9], /hotwire/);
    await shot("audit");
  });

  await step("overview: the counters show the requests and the block", async () => {
    await page.click("a[href='#overview']");
    await page.waitForFunction(() => Number(document.querySelector("#total-blocked").textContent) >= 1);
    assert.ok(Number(await page.textContent("#total-requests")) >= 2);
    const blocked = await page.$$eval("#verdict-table tbody tr[data-verdict=blocked]", (rows) => rows.map((r) => r.cells[2].textContent));
    assert.ok(blocked.includes("S2"), `blocked categories: ${blocked}`);
    // A second sample draws the charts' lines.
    await page.waitForFunction(() => document.querySelectorAll("#chart-requests polyline").length === 1, null, { timeout: 15000 });
    await page.waitForTimeout(5500);
    await shot("overview");
  });

  await step("policies: the default policy with its categories", async () => {
    await page.click("a[href='#policies']");
    await page.waitForSelector("article.policy[data-policy=default]");
    assert.match(await page.textContent("article.policy[data-policy=default] h3"), /default \(default\)/);
    const rows = await page.$$eval("article.policy[data-policy=default] tbody tr", (r) => r.map((x) => x.cells[0].textContent));
    assert.ok(rows.includes("S2"));
    await shot("policies");
  });

  await step("knowledge: a file is ingested with progress, listed, and deleted", async () => {
    await page.click("a[href='#knowledge']");
    await page.click(`button[data-collection='${collection}']`);
    await page.waitForSelector("#document-table tbody tr[data-source='kestrel.md']");
    await page.setInputFiles("#upload-file", {
      name: "billing.txt",
      mimeType: "text/plain",
      buffer: Buffer.from("Invoices are issued on the first business day of each month. Refunds take ten working days."),
    });
    await page.click("#upload-form button");
    await page.waitForFunction(() => document.querySelector("#ingest-status").textContent.startsWith("Ingested billing.txt"));
    await page.waitForSelector("#document-table tbody tr[data-source='billing.txt']");
    await shot("knowledge");
    await page.click("#document-table tbody tr[data-source='billing.txt'] button");
    await page.waitForSelector("#document-table tbody tr[data-source='billing.txt']", { state: "detached" });
  });

  await step("the page broke no content-security rule and logged no error", async () => {
    assert.deepEqual(violations, []);
    assert.deepEqual(unauthorized, [`${base}/v1/admin/policies`], "only the refused login was a 401");
  });
} finally {
  await browser.close();
}
console.log(failures.length ? `${failures.length} failed` : "all passed");
process.exit(failures.length ? 1 : 0);
