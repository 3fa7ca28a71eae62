// Strict ajv (draft 2020-12) over Herald's schemas.
//   node ajv_compile.js SCHEMA...              compile each; one JSON line per file: {"file", "ok", "error"}
//   node ajv_compile.js --validate SCHEMA DOCS  validate each document of the JSON array DOCS: {"index", "valid"}
// `markdownDescription` is declared as an annotation vocabulary: editors read it, validators ignore it.
// Exits 1 if a schema fails to compile.
"use strict";
const fs = require("fs");
const Ajv2020 = require("ajv/dist/2020").default;
const addFormats = require("ajv-formats").default;

function strictAjv() {
  const ajv = new Ajv2020({ strict: true, allErrors: true });
  addFormats(ajv);
  ajv.addVocabulary(["markdownDescription"]);
  return ajv;
}

const args = process.argv.slice(2);
if (args[0] === "--validate") {
  const validate = strictAjv().compile(JSON.parse(fs.readFileSync(args[1], "utf8")));
  JSON.parse(fs.readFileSync(args[2], "utf8")).forEach((doc, index) => {
    console.log(JSON.stringify({ index, valid: validate(doc) }));
  });
  process.exit(0);
}
let failed = false;
for (const file of args) {
  try {
    strictAjv().compile(JSON.parse(fs.readFileSync(file, "utf8")));
    console.log(JSON.stringify({ file, ok: true }));
  } catch (error) {
    failed = true;
    console.log(JSON.stringify({ file, ok: false, error: String(error.message || error) }));
  }
}
process.exit(failed ? 1 : 0);
