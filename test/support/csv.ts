// A strict RFC 4180 reader for the exports' CSV: quoted fields, doubled quotes, CRLF records; it
// throws on anything else, so a malformed export fails the test that reads it.
export function parseCsv(text: string): string[][] {
  const records: string[][] = [];
  let record: string[] = [];
  let field = "";
  let i = 0;
  let quoted = false;
  while (i < text.length) {
    const c = text[i]!;
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') (field += '"'), (i += 2);
      else if (c === '"') (quoted = false), i++;
      else (field += c), i++;
    } else if (c === '"' && field === "") (quoted = true), i++;
    else if (c === ",") record.push(field), (field = ""), i++;
    else if (c === "\r" && text[i + 1] === "\n") record.push(field), records.push(record), (record = []), (field = ""), (i += 2);
    else if (c === '"' || c === "\n" || c === "\r") throw new Error(`not RFC 4180 at ${i}: ${JSON.stringify(text.slice(i - 20, i + 20))}`);
    else (field += c), i++;
  }
  if (field !== "" || record.length) throw new Error("last record not terminated by CRLF");
  return records;
}
