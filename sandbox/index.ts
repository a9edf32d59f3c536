// The sandbox's entry point: the two commands the agent's CLI hands over to it. The agent reaches
// this module only through the CLI's dynamic import, so nothing in agent/ depends on the sandbox.
export { emulateCommand } from './emulate.js';
export { sandboxCommand } from './sandbox.js';
