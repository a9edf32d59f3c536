// The IMDS edge of a simulated instance: the agent's Imds port answered from the IMDS emulator's
// own instance description (defaultInstance, the same type its HTTP server serves), in-process.
// Ten thousand emulator servers would need three sockets an instance; what the fleet benchmark
// measures is SSM, and IMDS reads are counted, not throttled (IMDS has no account-wide limit).
import type { Imds, InstanceIdentity } from '../../../agent/aws/imds.js';
import type { ImdsInstance } from '../../../sandbox/emulators/imds.js';

const TAG_PATH = 'latest/meta-data/tags/instance/';

export class SimulatedImds implements Imds {
  reads = 0;

  constructor(readonly instance: ImdsInstance) {}

  async get(path: string): Promise<string | undefined> {
    this.reads++;
    const p = path.replace(/^\/+/, '');
    // EC2's default: no tags in instance metadata, so every tag path is a 404.
    if (p.startsWith(TAG_PATH)) return this.instance.tagsInMetadata ? this.instance.tags[p.slice(TAG_PATH.length)] : undefined;
    if (p === 'latest/dynamic/instance-identity/document') return JSON.stringify(this.document());
    return undefined;
  }

  async getBytes(path: string): Promise<Buffer | undefined> {
    this.reads++;
    return path.replace(/^\/+/, '') === 'latest/user-data' ? this.instance.userData : undefined;
  }

  async identity(): Promise<InstanceIdentity> {
    this.reads++;
    const i = this.instance;
    return { instanceId: i.instanceId, region: i.region, availabilityZone: i.availabilityZone, instanceType: i.instanceType, amiId: i.amiId, accountId: i.accountId };
  }

  private document(): Record<string, string> {
    const i = this.instance;
    return { instanceId: i.instanceId, region: i.region, availabilityZone: i.availabilityZone, instanceType: i.instanceType, imageId: i.amiId, accountId: i.accountId };
  }
}
