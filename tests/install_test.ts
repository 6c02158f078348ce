import assert from "node:assert/strict";
import { launcherScript } from "../scripts/build.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const decoder = new TextDecoder();

interface Tree {
  /** A temporary source checkout: scripts/, systemd/, kav.example.toml, dist/. */
  readonly src: string;
  /** The --prefix root. */
  readonly prefix: string;
  readonly dir: string;
}

async function copy(from: string, to: string, mode?: number): Promise<void> {
  await Deno.mkdir(to.replace(/\/[^/]+$/, ""), { recursive: true });
  await Deno.copyFile(from, to);
  if (mode !== undefined) await Deno.chmod(to, mode);
}

const EXAMPLE = `[server]\nlisten = "0.0.0.0:8080"\npublic_url = "https://kav.example.com"\n`;

/** A source tree with the real scripts and unit, the real example config when it exists. */
async function makeTree(dist: "executable" | "bundle" | "none"): Promise<Tree> {
  const dir = await Deno.makeTempDir({ prefix: "kav-install-test-" });
  const src = `${dir}/src`;
  await copy(`${ROOT}scripts/install.sh`, `${src}/scripts/install.sh`, 0o755);
  await copy(`${ROOT}scripts/uninstall.sh`, `${src}/scripts/uninstall.sh`, 0o755);
  await copy(`${ROOT}systemd/kav.service`, `${src}/systemd/kav.service`);
  try {
    await copy(`${ROOT}kav.example.toml`, `${src}/kav.example.toml`);
  } catch {
    await Deno.writeTextFile(`${src}/kav.example.toml`, EXAMPLE);
  }
  for (const doc of ["README.md", "docs/operations.md"]) {
    await copy(`${ROOT}${doc}`, `${src}/${doc}`);
  }
  await Deno.mkdir(`${src}/dist`, { recursive: true });
  if (dist === "executable") {
    await Deno.writeTextFile(`${src}/dist/kav`, "#!/bin/sh\necho compiled kav\n");
    await Deno.chmod(`${src}/dist/kav`, 0o755);
  } else if (dist === "bundle") {
    await Deno.writeTextFile(`${src}/dist/kav.js`, "console.log('bundled kav');\n");
    await Deno.writeTextFile(`${src}/dist/kav-launcher.sh`, launcherScript("/usr/local/lib/kav"));
    await Deno.chmod(`${src}/dist/kav-launcher.sh`, 0o755);
  }
  return { src, prefix: `${dir}/root`, dir };
}

async function sh(
  script: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command("sh", { args: [script, ...args], stdin: "null" }).output();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

async function install(tree: Tree, ...args: string[]) {
  const result = await sh(`${tree.src}/scripts/install.sh`, ["--prefix", tree.prefix, ...args]);
  assert.equal(result.code, 0, result.stdout + result.stderr);
  return result;
}

async function sha256(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Every entry under `root`: path, type, mode, mtime, and content hash for files. */
async function snapshot(root: string, dir = root): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir}/${entry.name}`;
    const info = await Deno.lstat(path);
    const mode = ((info.mode ?? 0) & 0o7777).toString(8);
    const rel = path.slice(root.length);
    if (info.isDirectory) {
      out.set(rel, `dir ${mode} ${info.mtime?.getTime()}`);
      for (const [k, v] of await snapshot(root, path)) out.set(k, v);
    } else {
      out.set(rel, `file ${mode} ${info.mtime?.getTime()} ${info.size} ${await sha256(path)}`);
    }
  }
  return out;
}

async function mode(path: string): Promise<string> {
  return (((await Deno.stat(path)).mode ?? 0) & 0o7777).toString(8);
}

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

Deno.test("install.sh --prefix lays out the executable, unit, config and credstore", async () => {
  const tree = await makeTree("executable");
  try {
    const { stdout } = await install(tree);
    const p = tree.prefix;
    assert.equal(await sha256(`${p}/usr/local/bin/kav`), await sha256(`${tree.src}/dist/kav`));
    assert.equal(await mode(`${p}/usr/local/bin/kav`), "755");
    assert.equal(
      await Deno.readTextFile(`${p}/etc/systemd/system/kav.service`),
      await Deno.readTextFile(`${ROOT}systemd/kav.service`),
    );
    assert.equal(await mode(`${p}/etc/systemd/system/kav.service`), "644");
    const example = await Deno.readTextFile(`${tree.src}/kav.example.toml`);
    assert.equal(await Deno.readTextFile(`${p}/etc/kav/kav.toml`), example);
    assert.equal(await Deno.readTextFile(`${p}/usr/local/share/doc/kav/kav.example.toml`), example);
    assert.equal(await mode(`${p}/etc/credstore`), "700");
    assert.equal(await exists(`${p}/usr/local/lib/kav`), false);
    // The unit's Documentation= and the README's relative links both resolve.
    for (const doc of ["README.md", "docs/operations.md"]) {
      const installed = `${p}/usr/local/share/doc/kav/${doc}`;
      assert.equal(await Deno.readTextFile(installed), await Deno.readTextFile(`${ROOT}${doc}`));
      assert.equal(await mode(installed), "644");
    }
    assert.match(stdout, /Installing Kav \(executable\)/);
    assert.match(stdout, /systemctl enable --now kav/);
    assert.match(stdout, /Webhook, HTTP POST, https:\/\/\S+\/twiml/);
    assert.match(stdout, /\/etc\/credstore\/kav\.twilio_auth_token/);
  } finally {
    await Deno.remove(tree.dir, { recursive: true });
  }
});

Deno.test("install.sh run twice changes nothing", async () => {
  const tree = await makeTree("executable");
  try {
    await install(tree);
    const before = await snapshot(tree.prefix);
    const { stdout } = await install(tree);
    assert.deepEqual(await snapshot(tree.prefix), before);
    assert.match(stdout, /nothing changed/);
    assert.doesNotMatch(stdout, /installed|created|removed/);
  } finally {
    await Deno.remove(tree.dir, { recursive: true });
  }
});

Deno.test("install.sh never overwrites an edited kav.toml", async () => {
  const tree = await makeTree("executable");
  try {
    await install(tree);
    const config = `${tree.prefix}/etc/kav/kav.toml`;
    const edited = (await Deno.readTextFile(config)) + "\n# edited by the operator\n";
    await Deno.writeTextFile(config, edited);
    await install(tree);
    assert.equal(await Deno.readTextFile(config), edited);
    // A newer example is installed beside it, and the operator is told.
    await Deno.writeTextFile(`${tree.src}/kav.example.toml`, EXAMPLE + "# new key\n");
    const { stdout } = await install(tree);
    assert.equal(await Deno.readTextFile(config), edited);
    assert.match(stdout, /kept your \S+kav\.toml; the example changed/);
    assert.equal(
      await Deno.readTextFile(`${tree.prefix}/usr/local/share/doc/kav/kav.example.toml`),
      EXAMPLE + "# new key\n",
    );
  } finally {
    await Deno.remove(tree.dir, { recursive: true });
  }
});

Deno.test("install.sh updates a kav.toml that is still the unedited example", async () => {
  const tree = await makeTree("executable");
  try {
    await install(tree);
    await Deno.writeTextFile(`${tree.src}/kav.example.toml`, EXAMPLE + "# new key\n");
    await install(tree);
    assert.equal(
      await Deno.readTextFile(`${tree.prefix}/etc/kav/kav.toml`),
      EXAMPLE + "# new key\n",
    );
  } finally {
    await Deno.remove(tree.dir, { recursive: true });
  }
});

Deno.test("install.sh installs deno and kav.js where no executable was built", async () => {
  const tree = await makeTree("bundle");
  try {
    const { stdout } = await install(tree, "--deno", Deno.execPath());
    const p = tree.prefix;
    assert.match(stdout, /Installing Kav \(bundle\)/);
    assert.equal(
      (await Deno.stat(`${p}/usr/local/lib/kav/deno`)).size,
      (await Deno.stat(Deno.execPath())).size,
    );
    assert.equal(await mode(`${p}/usr/local/lib/kav/deno`), "755");
    assert.equal(
      await Deno.readTextFile(`${p}/usr/local/lib/kav/kav.js`),
      "console.log('bundled kav');\n",
    );
    const launcher = await Deno.readTextFile(`${p}/usr/local/bin/kav`);
    assert.match(
      launcher,
      /^exec \/usr\/local\/lib\/kav\/deno run --cached-only .*kav\.js "\$@"$/m,
    );
    const before = await snapshot(p);
    await install(tree, "--deno", Deno.execPath());
    assert.deepEqual(await snapshot(p), before);

    // A later compiled build replaces the bundle install.
    await Deno.writeTextFile(`${tree.src}/dist/kav`, "#!/bin/sh\necho compiled\n");
    await Deno.chmod(`${tree.src}/dist/kav`, 0o755);
    await install(tree);
    assert.equal(await exists(`${p}/usr/local/lib/kav`), false);
    assert.equal(await Deno.readTextFile(`${p}/usr/local/bin/kav`), "#!/bin/sh\necho compiled\n");
  } finally {
    await Deno.remove(tree.dir, { recursive: true });
  }
});

Deno.test("install.sh fails clearly without a build or with a bad option", async () => {
  const tree = await makeTree("none");
  try {
    const script = `${tree.src}/scripts/install.sh`;
    const noBuild = await sh(script, ["--prefix", tree.prefix]);
    assert.notEqual(noBuild.code, 0);
    assert.match(noBuild.stderr, /no build in \S+dist: run 'deno task compile'/);
    await Deno.writeTextFile(`${tree.src}/dist/kav.js`, "");
    await Deno.writeTextFile(`${tree.src}/dist/kav-launcher.sh`, "");
    const badDeno = await sh(script, ["--prefix", tree.prefix, "--deno", "/nonexistent"]);
    assert.notEqual(badDeno.code, 0);
    assert.match(badDeno.stderr, /cannot run "\/nonexistent" to find the deno binary/);
    assert.equal(await exists(`${tree.prefix}/usr/local/bin/kav`), false);
    const badOption = await sh(script, ["--frobnicate"]);
    assert.notEqual(badOption.code, 0);
    assert.match(badOption.stderr, /unknown option "--frobnicate"/);
    const noDir = await sh(script, ["--prefix"]);
    assert.match(noDir.stderr, /missing a directory after --prefix/);
  } finally {
    await Deno.remove(tree.dir, { recursive: true });
  }
});

Deno.test("uninstall.sh removes the program and unit and keeps config, secrets and records", async () => {
  const tree = await makeTree("bundle");
  try {
    await install(tree, "--deno", Deno.execPath());
    const p = tree.prefix;
    await Deno.writeTextFile(`${p}/etc/credstore/kav.openai_api_key`, "sk-test");
    await Deno.mkdir(`${p}/var/lib/private/kav`, { recursive: true });
    await Deno.writeTextFile(`${p}/var/lib/private/kav/kav.db`, "records");
    const script = `${tree.src}/scripts/uninstall.sh`;
    const result = await sh(script, ["--prefix", p]);
    assert.equal(result.code, 0, result.stderr);
    for (
      const gone of ["usr/local/bin/kav", "usr/local/lib/kav", "etc/systemd/system/kav.service"]
    ) {
      assert.equal(await exists(`${p}/${gone}`), false, gone);
    }
    assert.equal(await exists(`${p}/usr/local/share/doc/kav`), false);
    assert.ok(await exists(`${p}/etc/kav/kav.toml`));
    assert.equal(await Deno.readTextFile(`${p}/etc/credstore/kav.openai_api_key`), "sk-test");
    assert.equal(await Deno.readTextFile(`${p}/var/lib/private/kav/kav.db`), "records");
    assert.match(result.stdout, /Kept/);
    const again = await sh(script, ["--prefix", p]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /Kav is not installed/);
  } finally {
    await Deno.remove(tree.dir, { recursive: true });
  }
});
