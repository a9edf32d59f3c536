// Records a failed pass to a rollout's candidate where every instance reads it: one String
// parameter per failed instance, `<prefix>/rollout/failures/<instance-id>`, then a bump of the
// prefix's revision parameter so watchers re-read the tree at their next poll. Written only on
// failure, and only while the records seen are below the threshold, so a fleet writes about
// `errorThreshold` records per bad candidate however large it is.
import type { Logger } from '../log.js';
import type { Clock } from '../ports.js';
import type { TakenCandidate } from './select.js';
import { ROLLOUT, type FailureRecord } from './spec.js';

/** SSM PutParameter: the one write the agent makes. */
export type PutParameter = (input: { Name: string; Value: string; Type: 'String'; Overwrite: boolean }) => Promise<unknown>;

/** Keeps a record well inside a Standard parameter's 4 KB. */
const MAX_REASON = 1_000;

export class FailureReporter {
  constructor(
    private readonly put: () => Promise<PutParameter | undefined>,
    private readonly options: { readonly clock: Clock; readonly log: Logger; readonly revisionParameter: string | null },
  ) {}

  /** Never throws: a record that cannot be written costs the halt a little time, not the pass. */
  async report(taken: readonly TakenCandidate[], instanceId: string, failure: { stage: string; reason: string }): Promise<number> {
    let written = 0;
    for (const t of taken) {
      if (!t.record) continue;
      const record: FailureRecord = {
        candidate: t.candidate,
        stage: failure.stage,
        reason: failure.reason.slice(0, MAX_REASON),
        at: new Date(this.options.clock.now()).toISOString(),
      };
      const name = `${t.prefix}/${ROLLOUT}/failures/${instanceId}`;
      try {
        const put = await this.put();
        if (!put) throw new Error('this agent has no SSM client to write with');
        await put({ Name: name, Value: JSON.stringify(record), Type: 'String', Overwrite: true });
        written++;
        if (this.options.revisionParameter) {
          await put({ Name: `${t.prefix}/${this.options.revisionParameter}`, Value: `rollout failure ${instanceId} ${record.at}`, Type: 'String', Overwrite: true });
        }
        this.options.log.warn({ event: 'rollout.failure-recorded', parameter: name, candidate: t.candidate, stage: failure.stage }, `recorded the failed candidate ${t.candidate} at ${name}`);
      } catch (err) {
        this.options.log.error({ event: 'rollout.record-failed', parameter: name, err: (err as Error).message }, `cannot record the failed candidate at ${name}: ${(err as Error).message}`);
      }
    }
    return written;
  }
}
