// Drives the e2b fake with the official `e2b` npm SDK: create, run (exit 0
// and non-zero), write + read a file, set the lifetime, kill. Prints one JSON
// document of what the SDK saw; any rejection by the SDK exits non-zero.
// SDK_DIR: the directory whose node_modules holds `e2b`.
const path = require("path");
const { Sandbox, CommandExitError } = require(path.join(process.env.SDK_DIR, "node_modules", "e2b"));

(async () => {
	const out = {};
	const sbx = await Sandbox.create({ timeoutMs: 120000, metadata: { test: "sdk" } });
	out.sandboxId = sbx.sandboxId;
	const r = await sbx.commands.run("echo hello; echo oops >&2; printf %s \"$HOME\" > .home; pwd");
	out.stdout = r.stdout;
	out.stderr = r.stderr;
	out.exitCode = r.exitCode;
	const home = r.stdout.trim().split("\n").pop();
	out.home = home;
	const w = await sbx.files.write(home + "/dir/sdk.txt", "written by the sdk\n");
	out.written = w.path;
	out.readBack = await sbx.files.read(home + "/dir/sdk.txt");
	out.catBySandbox = (await sbx.commands.run("cat dir/sdk.txt")).stdout;
	await sbx.commands.run("printf 'from a command' > made.txt");
	out.madeByCommand = await sbx.files.read(home + "/made.txt");
	try {
		await sbx.commands.run("echo before-fail; echo bad >&2; exit 7");
		out.failure = "no error";
	} catch (e) {
		if (!(e instanceof CommandExitError)) throw e;
		out.failure = { exitCode: e.exitCode, stdout: e.stdout, stderr: e.stderr };
	}
	try {
		await sbx.files.read(home + "/missing.txt");
		out.missing = "no error";
	} catch (e) {
		out.missing = e.name;
	}
	await sbx.setTimeout(300000);
	out.running = await sbx.isRunning();
	await sbx.kill();
	out.killed = true;
	console.log(JSON.stringify(out));
})().catch((e) => {
	console.error("SDK error:", e && e.stack ? e.stack : e);
	process.exit(1);
});
