// A strict RFC 4180 reader for the exports' CSV: quoted fields, doubled quotes, CRLF records; it
// throws on anything else, so a malformed export fails the test that reads it.
export function parseCsv(text: string): string[][] {
  const records: string[][] = [];
  let record: string[] = [];
  let field = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"' && field === "") quoted = true;
    else if (c === ",") {
      record.push(field);
      field = "";
    } else if (c === "\r" && text[i + 1] === "\n") {
      record.push(field);
      records.push(record);
      record = [];
      field = "";
      i++;
    } else if (c === '"' || c === "\n" || c === "\r") throw new Error(`not RFC 4180 at ${i}: ${JSON.stringify(text.slice(i - 20, i + 20))}`);
    else field += c;
  }
  if (field !== "" || record.length) throw new Error("last record not terminated by CRLF");
  return records;
}
