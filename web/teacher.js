// The teacher's view: for a teacher or an admin, their classes' reports
// (`GET /api/classes/{id}/report`, docs/study.md) as a table, a bar chart of the questions each
// student asked (inline SVG, no library) and the class's most asked and weakest sections; the
// same report as CSV through a download link. Students never see it (the server refuses them).

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const BAR = 22; // px per student in the chart
const LABEL = 160; // px for the names on the left (less on a narrow screen)
let shown = null; // the report on screen, redrawn to the chart's width on resize

function cell(row, text, numeric = false) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  if (numeric) td.className = "num";
  row.append(td);
}

function svgElement(name, attributes, text) {
  const el = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

function count(n, noun) {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

function studentName(s) {
  return s.name || s.email || s.user_id;
}

function drawChart(students) {
  const svg = $("report-chart");
  svg.replaceChildren();
  const width = Math.max(200, svg.clientWidth || 600);
  const label = Math.min(LABEL, Math.round(width * 0.35));
  const most = Math.max(1, ...students.map((s) => s.questions));
  const plot = width - label - 40;
  svg.setAttribute("height", String(Math.max(1, students.length) * BAR + 4));
  svg.setAttribute("viewBox", `0 0 ${width} ${Math.max(1, students.length) * BAR + 4}`);
  students.forEach((s, i) => {
    const y = i * BAR + 2;
    const bar = svgElement("rect", { class: "bar", x: label, y, height: BAR - 6,
                                     width: Math.max(1, (s.questions / most) * plot) });
    bar.append(svgElement("title", {}, `${studentName(s)}: ${s.questions} questions`));
    svg.append(svgElement("text", { x: label - 6, y: y + BAR / 2, "text-anchor": "end",
                                    "dominant-baseline": "middle" },
                          studentName(s).slice(0, Math.floor(label / 7))),
               bar,
               svgElement("text", { x: label + Math.max(1, (s.questions / most) * plot) + 4,
                                    y: y + BAR / 2, "dominant-baseline": "middle" },
                          String(s.questions)));
  });
}

function fillList(id, items, describe) {
  const list = $(id);
  list.replaceChildren(...items.map((item) => {
    const li = document.createElement("li");
    li.textContent = describe(item);
    return li;
  }));
  if (!items.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = "None yet";
    list.append(li);
  }
}

function render(report) {
  shown = report;
  const totals = report.totals;
  $("report-summary").textContent =
    `${count(totals.students, "student")}, ${count(totals.questions, "question")}, ` +
    `${count(totals.voice_minutes, "voice minute")}` +
    (report.class.course ? ` (course ${report.class.course})` : "");
  const rows = report.students.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.student = s.user_id;
    cell(tr, studentName(s));
    cell(tr, s.voice_minutes, true);
    cell(tr, s.questions, true);
    cell(tr, s.sections_asked.slice(0, 3).map((x) => `${x.section} (${x.questions})`).join("; "));
    cell(tr, s.mastery.mean === null ? "–" : `${Math.round(s.mastery.mean * 100)}%`, true);
    cell(tr, s.mastery.weakest.slice(0, 3).join("; "));
    cell(tr, s.flagged_turns, true);
    return tr;
  });
  $("report-table").tBodies[0].replaceChildren(...rows);
  drawChart(report.students);
  fillList("report-asked", totals.most_asked_sections, (x) =>
    `${x.section}: ${count(x.questions, "question")}, ${count(x.students, "student")}`);
  fillList("report-lowest", totals.lowest_mastery_sections, (x) =>
    `${x.section}: ${Math.round(x.mean_score * 100)}% (${count(x.students, "student")})`);
}

async function load(classId) {
  const url = `/api/classes/${encodeURIComponent(classId)}/report`;
  $("report-csv").href = `${url}?format=csv`;
  $("teacher").dataset.loaded = "";
  const response = await fetch(url, { credentials: "same-origin" });
  if ($("report-class").value !== classId) return; // another class was picked meanwhile
  if (!response.ok) {
    $("report-summary").textContent = `The report could not be loaded (HTTP ${response.status}).`;
    return;
  }
  render(await response.json());
  $("teacher").dataset.loaded = classId;
}

// Shows the view to a teacher or an admin with at least one class; resolves once the first
// report is on screen.
export async function showTeacherView(user) {
  if (user.role !== "teacher" && user.role !== "admin") return;
  const response = await fetch("/api/classes", { credentials: "same-origin" });
  if (!response.ok) return;
  const classes = (await response.json()).items;
  if (!classes.length) return;
  const select = $("report-class");
  select.replaceChildren(...classes.map((c) => new Option(c.name, c.id)));
  select.addEventListener("change", () => load(select.value));
  window.addEventListener("resize", () => shown && drawChart(shown.students));
  $("teacher").hidden = false;
  await load(select.value);
}
