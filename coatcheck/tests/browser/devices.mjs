// The login example's pages in Debian's headless Chromium, driven by playwright-core
// (coatcheck/tests/browser.rs starts the servers and runs this script).
//
//   node devices.mjs <base-url> <refuse-base-url> <evict-base-url> <screenshot.png> <attacker-url>
//
// <base-url> serves the app without a cap; <refuse-base-url> with at most 2 devices per user
// and LimitPolicy::Refuse; <evict-base-url> with at most 2 and EvictLeastRecentlySeen;
// <attacker-url> is another site whose page posts a form to <base-url>/logout-others. Each
// browser context is one device (its own cookies, its own user agent). Prints one line per
// step; exits non-zero on the first thing the pages get wrong.
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const [base, refuseBase, evictBase, screenshot, attacker] = process.argv.slice(2);
if (!attacker) {
  console.error('usage: node devices.mjs <base-url> <refuse-base-url> <evict-base-url> <screenshot.png> <attacker-url>');
  process.exit(2);
}

const CHROME_LINUX =
  'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36';
const SAFARI_IPHONE =
  'Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1';
const FIREFOX_WINDOWS =
  'Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0';

// A hung browser must not hang the test: give up well inside the Rust side's limit.
setTimeout(() => {
  console.error('browser: gave up after 60 s');
  process.exit(3);
}, 60_000).unref();

const started = Date.now();
const step = (what) => console.log(`browser: ${((Date.now() - started) / 1000).toFixed(1)}s ${what}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--no-first-run',
    '--disable-sync',
    '--disable-quic',
  ],
});
step(`Chromium ${browser.version()} started`);

/** A new device: its own browser context (cookie jar) with its own user agent. */
async function device(userAgent) {
  const context = await browser.newContext({ userAgent, viewport: { width: 820, height: 560 } });
  context.setDefaultTimeout(10_000);
  return context.newPage();
}

/** Fills the sign-in form at `url` and submits it; answers the status of the page it lands on. */
async function signIn(page, url, username = 'alice', password = 'wonderland', remember = false) {
  await page.goto(`${url}/`);
  await page.fill('#username', username);
  await page.fill('#password', password);
  if (remember) await page.check('#remember');
  const [response] = await Promise.all([page.waitForNavigation(), page.click('#login-button')]);
  return response.status();
}

/** The session cookie's expiry in seconds since the epoch as the browser keeps it; -1 for a
 * cookie that ends with the browser session. */
async function sessionCookieExpires(page) {
  const cookies = await page.context().cookies();
  const sid = cookies.find((c) => c.name === 'sid');
  assert.ok(sid, `a session cookie: ${JSON.stringify(cookies.map((c) => c.name))}`);
  return sid.expires;
}

/** Clicks a button that submits a form, and waits for the page the post leads to. */
async function submit(page, selector) {
  await Promise.all([page.waitForNavigation(), page.click(selector)]);
}

/** The rows of the devices page this page shows. */
function rows(page) {
  return page.$$eval('#devices li.device', (items) =>
    items.map((li) => ({
      handle: li.dataset.handle,
      current: li.dataset.current === 'true',
      summary: li.querySelector('.summary').textContent.trim(),
      badge: li.querySelector('.this-device')?.textContent.trim() ?? null,
      ip: li.querySelector('.ip').textContent.trim(),
      lastActive: li.querySelector('.last-active').textContent.trim(),
      signOut: li.querySelector('form.revoke button') !== null,
    })),
  );
}

async function expectSignInForm(page, url) {
  assert.equal(page.url(), `${url}/`, 'on the sign-in form');
  assert.ok(await page.isVisible('#login-form'), 'the sign-in form is shown');
}

async function main() {
  // Logged out: the devices page sends the browser to the sign-in form.
  const laptop = await device(CHROME_LINUX);
  await laptop.goto(`${base}/devices`);
  await expectSignInForm(laptop, base);
  step('logged out: /devices lands on the sign-in form');

  assert.equal(await signIn(laptop, base, 'alice', 'not the password'), 401);
  assert.match(await laptop.textContent('#login-error'), /Wrong username or password/);
  assert.equal(await laptop.inputValue('#username'), 'alice', 'the username is kept');
  step('a wrong password shows the form again with the error');

  assert.equal(await signIn(laptop, base), 200);
  assert.equal(laptop.url(), `${base}/devices`);
  let list = await rows(laptop);
  assert.equal(list.length, 1);
  assert.equal(list[0].summary, 'Chrome on Linux');
  assert.equal(list[0].badge, 'This device');
  const laptopHandle = list[0].handle;
  step('device 1 (Chrome on Linux) signed in: one device listed, marked as this device');

  assert.equal(await sessionCookieExpires(laptop), -1, '"Remember me" unticked: a browser-session cookie');

  const phone = await device(SAFARI_IPHONE);
  assert.equal(await signIn(phone, base, 'alice', 'wonderland', true), 200);
  const days = ((await sessionCookieExpires(phone)) - Date.now() / 1000) / 86400;
  assert.ok(days > 29 && days <= 30.01, `"Remember me" ticked: a cookie for 30 days, got ${days}`);
  list = await rows(phone);
  assert.equal(list.length, 2);
  assert.ok(list[0].current && list[0].summary === 'Safari on iPhone', JSON.stringify(list));
  const phoneHandle = list[0].handle;
  assert.notEqual(phoneHandle, laptopHandle);
  step('device 2 (Safari on iPhone) signed in with "Remember me" (a 30-day cookie; device 1 has a browser-session cookie): it sees both, itself first');

  await laptop.goto(`${base}/devices`);
  list = await rows(laptop);
  assert.equal(list.length, 2, JSON.stringify(list));
  const [mine, other] = list;
  assert.deepEqual(
    [mine.handle, mine.current, mine.summary, mine.badge, mine.signOut],
    [laptopHandle, true, 'Chrome on Linux', 'This device', false],
  );
  assert.deepEqual(
    [other.handle, other.current, other.summary, other.badge, other.signOut],
    [phoneHandle, false, 'Safari on iPhone', null, true],
  );
  assert.equal(mine.ip, '127.0.0.1');
  assert.equal(other.ip, '127.0.0.1');
  assert.equal(mine.lastActive, 'active now');
  assert.equal(other.lastActive, 'last active just now');
  assert.ok(await laptop.isVisible('#logout-others'));
  // The JSON list agrees with the page (the same cookies, from the page's context).
  const json = await (await laptop.request.get(`${base}/sessions`)).json();
  assert.deepEqual(
    json.map((s) => [s.handle, s.current, s.user_agent, s.ip]),
    [
      [laptopHandle, true, CHROME_LINUX, '127.0.0.1'],
      [phoneHandle, false, SAFARI_IPHONE, '127.0.0.1'],
    ],
  );
  assert.ok(json.every((s) => Number.isInteger(s.created_at) && Number.isInteger(s.last_seen)));
  await laptop.screenshot({ path: screenshot, fullPage: true });
  step(`device 1 lists both devices, "This device" on its own row; screenshot ${screenshot}`);

  // Every form of the pages carries the session's token, masked afresh on each page.
  const tokens = await laptop.$$eval('form input[name="csrf_token"]', (inputs) => inputs.map((i) => i.value));
  assert.ok(tokens.length >= 3 && tokens.every((t) => t.length === 86), JSON.stringify(tokens));
  await laptop.reload();
  const again = await laptop.$eval('form input[name="csrf_token"]', (i) => i.value);
  assert.ok(!tokens.includes(again), 'a new mask on every page');

  // Another site's form posting to "Sign out all other devices" in the signed-in browser.
  const evil = await laptop.context().newPage();
  await evil.goto(`${attacker}/`);
  const [forged] = await Promise.all([evil.waitForNavigation(), evil.click('#forge')]);
  assert.equal(forged.status(), 403, 'the cross-site form post is refused');
  assert.match(await evil.textContent('body'), /cross-site request refused/);
  await evil.close();
  await laptop.goto(`${base}/devices`);
  assert.equal((await rows(laptop)).length, 2, 'the forged post signed nobody out');
  step('a form on another site posting to /logout-others is refused (403) and signs nobody out');

  await submit(laptop, `li.device[data-handle="${phoneHandle}"] .revoke-button`);
  assert.equal(laptop.url(), `${base}/devices`);
  assert.equal(await laptop.textContent('#notice'), 'Signed out 1 device.');
  list = await rows(laptop);
  assert.deepEqual(list.map((d) => d.handle), [laptopHandle]);
  await laptop.reload();
  assert.equal(await laptop.$('#notice'), null, 'the flash message is shown once');
  step("device 1 signed device 2 out from its devices page (the notice a flash message, shown once)");

  await phone.goto(`${base}/devices`);
  await expectSignInForm(phone, base);
  step("device 2's next visit to /devices lands on the sign-in form");

  await submit(laptop, '#logout');
  await expectSignInForm(laptop, base);
  step('device 1 signed itself out');

  // At most 2 devices, refuse past it.
  const [r1, r2, r3] = await Promise.all([
    device(CHROME_LINUX),
    device(SAFARI_IPHONE),
    device(FIREFOX_WINDOWS),
  ]);
  assert.equal(await signIn(r1, refuseBase), 200);
  assert.equal(await signIn(r2, refuseBase), 200);
  assert.equal(await signIn(r3, refuseBase), 409);
  assert.equal(r3.url(), `${refuseBase}/login`, 'the form again, as the answer to the post');
  assert.ok(await r3.isVisible('#login-form'));
  assert.match(await r3.textContent('#login-error'), /too many devices signed in/);
  step('cap 2, refuse: a third login shows "too many devices signed in" (409)');

  await r1.goto(`${refuseBase}/devices`);
  await submit(r1, '#logout-others');
  assert.equal(await r1.textContent('#notice'), 'Signed out 1 device.');
  assert.equal((await rows(r1)).length, 1);
  assert.equal(await signIn(r3, refuseBase), 200);
  assert.deepEqual(
    (await rows(r3)).map((d) => [d.summary, d.current]),
    [
      ['Firefox on Windows 10', true],
      ['Chrome on Linux', false],
    ],
  );
  step('after "Sign out all other devices" on device 1, the third device gets in');

  // At most 2 devices, the least recently seen signed out past it.
  const [e1, e2, e3] = await Promise.all([
    device(CHROME_LINUX),
    device(SAFARI_IPHONE),
    device(FIREFOX_WINDOWS),
  ]);
  assert.equal(await signIn(e1, evictBase), 200);
  assert.equal(await signIn(e2, evictBase), 200);
  assert.equal(await signIn(e3, evictBase), 200);
  assert.deepEqual(
    (await rows(e3)).map((d) => d.summary),
    ['Firefox on Windows 10', 'Safari on iPhone'],
  );
  await e1.goto(`${evictBase}/devices`);
  await expectSignInForm(e1, evictBase);
  await e2.goto(`${evictBase}/devices`);
  assert.equal(e2.url(), `${evictBase}/devices`);
  step('cap 2, evict: a third login signs the least recently seen device out');
}

try {
  await main();
  step('all passed');
} finally {
  await browser.close();
}
