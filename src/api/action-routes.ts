import type { ActionCaller, DeviceActions } from '../actions/device-actions.js';
import type { PlanResult } from '../workloads/plan-preview.js';
import { HttpError, json, type Router } from './http-router.js';

/** What the action routes use: the device actions and the plan preview. */
export interface ActionsView {
  actions: Pick<DeviceActions, 'restartService' | 'restartApp' | 'power' | 'purgeApp'>;
  plan(doc: unknown): Promise<PlanResult>;
}

const LOCAL: ActionCaller = { by: 'local-api' };
const SEG = '([^/]+)';
const SERVICE_RESTART = new RegExp(`^/v2/apps/${SEG}/services/${SEG}/restart$`);
const APP_ACTION = new RegExp(`^/v2/apps/${SEG}/(restart|purge)$`);

const STATUS: Record<string, number> = { ACTION_NOT_ALLOWED: 403, ACTION_BAD_CONFIRM: 400, UNKNOWN_APP: 404, UNKNOWN_SERVICE: 404, NO_INSTANCE: 409 };
const ERROR: Record<number, string> = { 400: 'bad_request', 403: 'forbidden', 404: 'not_found', 409: 'conflict' };

function decoded(part: string | undefined): string {
  try {
    return decodeURIComponent(part ?? '');
  } catch {
    throw new HttpError(400, 'bad_request', 'a name in the path is not valid percent-encoding');
  }
}

/** An action's refusal as its status (403 not allowed, 400 bad confirmation, 404 unknown, 409 no instance yet). */
async function answer(run: () => Promise<unknown>): Promise<unknown> {
  try {
    return await run();
  } catch (err) {
    const status = STATUS[(err as { code?: string }).code ?? ''];
    if (status === undefined) throw err;
    return json(status, { error: ERROR[status], message: (err as Error).message });
  }
}

/**
 * `POST /v2/apps/{app}/services/{service}/restart`, `POST /v2/apps/{app}/restart`,
 * `POST /v2/apps/{app}/purge` (`{ "confirm": "<app>" }`), `POST /v2/device/reboot`,
 * `POST /v2/device/shutdown`, and `POST /v2/target/plan` (a candidate target; nothing changes).
 */
export function actionRoutes(r: Router, view: ActionsView, planBodyLimit: { bytes: number; setting: string }): void {
  r.pattern(SERVICE_RESTART, '/v2/apps/x/services/x/restart', (req) => {
    const m = SERVICE_RESTART.exec(req.path);
    return answer(() => view.actions.restartService(decoded(m?.[1]), decoded(m?.[2]), LOCAL));
  });
  r.pattern(APP_ACTION, '/v2/apps/x/restart', (req) => {
    const m = APP_ACTION.exec(req.path);
    const app = decoded(m?.[1]);
    if (m?.[2] === 'restart') return answer(() => view.actions.restartApp(app, LOCAL));
    const confirm = (req.body as { confirm?: unknown } | undefined)?.confirm;
    return answer(() => view.actions.purgeApp(app, confirm, LOCAL));
  });
  for (const action of ['reboot', 'shutdown'] as const) {
    r.post(`/v2/device/${action}`, async () => {
      const out = await answer(() => view.actions.power(action, LOCAL));
      if (out !== null && typeof out === 'object' && 'go' in out) {
        // The answer goes out first; the agent then stops and the power action runs.
        setImmediate(() => (out as { go(): void }).go());
        return json(202, { requested: action });
      }
      return out;
    });
  }
  r.post(
    '/v2/target/plan',
    async (req) => {
      const result = await view.plan(req.body);
      if (!result.ok) return json(400, { error: 'bad_request', message: result.validation.message, issues: result.validation.issues });
      return result.plan;
    },
    { bodyLimit: planBodyLimit },
  );
}
