// Drives the vercel fake with the official @vercel/sandbox SDK: create, run
// (exit 0, non-zero, detached + wait), write + read files, extend, stop.
// The SDK talks to https://vercel.com/api; a custom fetch rewrites that base
// to FAKE_URL. Prints one JSON document of what the SDK saw; any rejection
// (its zod validators check every response) exits non-zero.
const path = require("path");
const { Sandbox } = require(path.join(process.env.SDK_DIR, "node_modules", "@vercel", "sandbox"));

const BASE = "https://vercel.com/api";
function fakeFetch(url, opts) {
	const u = String(url);
	if (!u.startsWith(BASE)) throw new Error("unexpected URL " + u);
	const { dispatcher, ...rest } = opts || {};
	return fetch(process.env.FAKE_URL + u.slice(BASE.length), rest);
}

(async () => {
	const out = {};
	const creds = {
		token: process.env.VERCEL_TOKEN,
		teamId: process.env.VERCEL_TEAM_ID,
		projectId: process.env.VERCEL_PROJECT_ID,
	};
	const sbx = await Sandbox.create({ ...creds, fetch: fakeFetch, runtime: "python3.13", timeout: 120000 });
	const r = await sbx.runCommand("bash", ["-lc", "echo hello; echo oops >&2; pwd"]);
	out.exitCode = r.exitCode;
	out.stdout = await r.stdout();
	out.stderr = await r.stderr();
	const cwd = out.stdout.trim().split("\n").pop();
	out.cwd = cwd;
	await sbx.writeFiles([{ path: cwd + "/dir/sdk.txt", content: Buffer.from("written by the sdk\n") }]);
	out.readBack = (await sbx.readFileToBuffer({ path: cwd + "/dir/sdk.txt" })).toString();
	out.relRead = (await sbx.readFileToBuffer({ path: "dir/sdk.txt" })).toString();
	out.catBySandbox = await (await sbx.runCommand("cat", ["dir/sdk.txt"])).stdout();
	out.mode = (await (await sbx.runCommand("stat", ["-c", "%a", "dir/sdk.txt"])).stdout()).trim();
	const f = await sbx.runCommand("bash", ["-lc", "echo before-fail; echo bad >&2; exit 7"]);
	out.failure = { exitCode: f.exitCode, stdout: await f.stdout(), stderr: await f.stderr() };
	const d = await sbx.runCommand({ cmd: "bash", args: ["-c", "sleep 0.3; echo detached"], detached: true });
	const done = await d.wait();
	out.detached = { exitCode: done.exitCode, stdout: await done.stdout() };
	out.missing = await sbx.readFileToBuffer({ path: cwd + "/missing.txt" });
	await sbx.mkDir(cwd + "/newdir");
	await sbx.extendTimeout(60000);
	await sbx.stop();
	out.stopped = true;
	console.log(JSON.stringify(out));
})().catch((e) => {
	console.error("SDK error:", e && e.stack ? e.stack : e, e && e.json ? JSON.stringify(e.json) : "");
	process.exit(1);
});
