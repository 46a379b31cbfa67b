// Validates custom resources against the schemas of their CRDs, as compiled by the npm packages
// @kubernetes-models/keda and @kubernetes-models/prometheus-operator.
// Usage: node validate_crds.mjs NODE_MODULES < documents.json
// stdin: a JSON list of manifests; stdout: a JSON list of {kind, name, error} (error null when
// the manifest is valid). Exits 2 when a kind has no model here.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const MODELS = {
  "keda.sh/v1alpha1 ScaledObject": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js",
  "monitoring.coreos.com/v1 ServiceMonitor":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
};

const modules = process.argv[2];
const documents = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const doc of documents) {
  const key = `${doc.apiVersion} ${doc.kind}`;
  if (!(key in MODELS)) {
    console.error(`no model for ${key}`);
    process.exit(2);
  }
  const module = await import(pathToFileURL(join(modules, MODELS[key])).href);
  const Model = module[doc.kind];
  let error = null;
  try {
    new Model(doc).validate();
  } catch (e) {
    error = String(e.message);
  }
  results.push({ kind: doc.kind, name: doc.metadata?.name ?? null, error });
}
console.log(JSON.stringify(results));
