// What the Node checks share: each check prints one line; the run exits 1
// if any failed.
let failed = 0;

export async function check(name, fn) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
  }
}

export function expect(cond, what) {
  if (!cond) throw new Error(what);
}

export function finish() {
  console.log(failed ? `${failed} check(s) failed` : 'all checks passed');
  process.exit(failed ? 1 : 0);
}
