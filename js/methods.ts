// Gateway methods clawmatrix.status and clawmatrix.peers (scope operator.read), and
// clawmatrix.trustReset (scope operator.admin: it changes which keys this node accepts).
import type { PluginApi } from "./host.js";
import type { ClawMatrixNode, PeerView, StatusReport } from "./native.js";

export function registerMethods(api: PluginApi, current: () => ClawMatrixNode): void {
  const method = (name: string, read: (n: ClawMatrixNode) => StatusReport | PeerView[]) =>
    api.registerGatewayMethod(
      name,
      ({ respond }) => {
        try {
          respond(true, read(current()));
        } catch (e) {
          const err = e as { code?: string; message?: string };
          respond(false, undefined, { code: err.code ?? "CLAWMATRIX_INTERNAL", message: String(err.message ?? e) });
        }
      },
      { scope: "operator.read" },
    );
  method("clawmatrix.status", (n) => n.status());
  method("clawmatrix.peers", (n) => n.peers());
  api.registerGatewayMethod(
    "clawmatrix.trustReset",
    async ({ params, respond }) => {
      try {
        respond(true, await current().trustReset(String(params?.nodeId ?? "")));
      } catch (e) {
        const err = e as { code?: string; message?: string };
        respond(false, undefined, { code: err.code ?? "CLAWMATRIX_INTERNAL", message: String(err.message ?? e) });
      }
    },
    { scope: "operator.admin" },
  );
}
