import { createServer } from "node:net";
import { reservePort } from "../harness/ports.mjs";

/**
 * A loopback port for the addon (or a gateway's plugin) to bind later. The addon cannot take a
 * socket from JS, so the port cannot be bound once and handed over as the Rust tests do; it comes
 * from a range this process reserved below the kernel's ephemeral range instead (see
 * reservePort), where no port-0 bind or outgoing connection takes it in the meantime.
 */
export function freePort() {
  return reservePort();
}

/** True when 127.0.0.1:port accepts a bind (nobody holds it). */
export function portIsFree(port, host = "127.0.0.1") {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once("error", () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}
