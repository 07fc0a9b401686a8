
import { EventSource } from "eventsource";
const [base, ...paths] = process.argv.slice(2);
const results = await Promise.all(paths.map((path) => new Promise((done) => {
  let requests = 0;
  const seen = [];
  const source = new EventSource(base + path, {
    fetch: (input, init) => { requests += 1; return fetch(input, init); },
  });
  for (const type of ["start", "token", "report", "done", "error"]) {
    source.addEventListener(type, (event) => { if (event.data) seen.push([event.lastEventId, type, event.data]); });
  }
  setTimeout(() => { done({ path, requests, readyState: source.readyState, seen }); source.close(); }, 4500);
})));
console.log(JSON.stringify(results));
