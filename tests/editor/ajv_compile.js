// Compile every JSON Schema given on the command line with ajv in strict mode (draft 2020-12).
// `markdownDescription` is declared as an annotation vocabulary: editors read it, validators ignore it.
// Prints one JSON line per file: {"file", "ok", "error"}; exits 1 if any schema fails to compile.
"use strict";
const fs = require("fs");
const Ajv2020 = require("ajv/dist/2020").default;
const addFormats = require("ajv-formats").default;

let failed = false;
for (const file of process.argv.slice(2)) {
  const ajv = new Ajv2020({ strict: true, allErrors: true });
  addFormats(ajv);
  ajv.addVocabulary(["markdownDescription"]);
  try {
    ajv.compile(JSON.parse(fs.readFileSync(file, "utf8")));
    console.log(JSON.stringify({ file, ok: true }));
  } catch (error) {
    failed = true;
    console.log(JSON.stringify({ file, ok: false, error: String(error.message || error) }));
  }
}
process.exit(failed ? 1 : 0);
