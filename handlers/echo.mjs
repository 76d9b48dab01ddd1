// A command function in Node.js (no npm packages): the event arrives as JSON on stdin,
// the result leaves as JSON on stdout; the context comes in environment variables.
let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const event = JSON.parse(input || "{}");
  const deadline = Number(process.env.LAMBDA_DEADLINE_MS);
  const result = {
    echo: event,
    functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
    requestId: process.env.LAMBDA_REQUEST_ID,
    remainingMs: deadline - Date.now(),
    tmpdir: process.env.TMPDIR,
  };
  process.stdout.write(JSON.stringify(result));
});
