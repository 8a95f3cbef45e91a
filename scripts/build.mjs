// npm run build [-- --release]: install npm deps if needed, build the addon and the shim.
import { build } from "./lib.mjs";

await build({ release: process.argv.includes("--release") });
