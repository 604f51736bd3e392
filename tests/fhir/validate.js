// Reads one FHIR R4 JSON resource on stdin; prints the validation messages as JSON and
// exits 1 when the resource is not valid. Used by tests/integration (support::assert_valid_fhir).
const { Fhir } = require('fhir');
let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const result = new Fhir().validate(JSON.parse(input), { errorOnUnexpected: true });
  console.log(JSON.stringify(result));
  process.exit(result.valid ? 0 : 1);
});
