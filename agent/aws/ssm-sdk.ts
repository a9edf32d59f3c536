// The SSM client and the commands the agent sends, and nothing else of @aws-sdk/client-ssm. Loaded
// lazily (agent.ts, rollout/commands.ts) from here rather than from the package: a dynamic import
// of the package keeps all of it in the bundle, the schema of every SSM operation included, and
// those schemas are built when the module loads and stay in the heap (~2.4 MiB resident against
// the few operations named here, `npm run bench -- watch`, "what each dependency adds").
export { DeleteParametersCommand, GetParametersByPathCommand, GetParametersCommand, PutParameterCommand, SSMClient } from '@aws-sdk/client-ssm';
