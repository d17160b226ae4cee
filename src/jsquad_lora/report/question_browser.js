// The report's question browser (question_browser.py writes the rows as JSON beside each container).
// One page of rows is in the document at a time, so thousands of questions stay fast. Every text from a
// run goes in through textContent, never as markup.
"use strict";
(function () {
  const STAGE_NAMES = { b: "before", a: "after" };

  // a prediction as shown: quoted, or the abstention it is when empty (the model said the passage has no answer)
  const said = (text) => (text === "" ? "no answer (abstained)" : `«${text}»`);
  // the gold answers as shown: none for a question its passage does not answer (SQuAD v2)
  const golds = (r) => (r.g.length ? r.g.join(" / ") : "none (no answer in the passage)");

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  // the passage as text and <mark>s: gold spans (class gold), the prediction's first occurrence (pred), both
  function highlighted(passage, goldSpans, prediction) {
    const spans = goldSpans.map(([s, e]) => [s, e, "gold"]);
    const at = prediction ? passage.indexOf(prediction) : -1;
    if (at >= 0) spans.push([at, at + prediction.length, "pred"]);
    const cuts = new Set([0, passage.length]);
    for (const [s, e] of spans) { cuts.add(s); cuts.add(e); }
    const points = [...cuts].sort((x, y) => x - y);
    const box = el("div", { className: "qb-passage" });
    for (let i = 0; i + 1 < points.length; i++) {
      const [x, y] = [points[i], points[i + 1]];
      const kinds = [...new Set(spans.filter(([s, e]) => s <= x && y <= e).map((span) => span[2]))].sort();
      const text = passage.slice(x, y);
      box.append(kinds.length ? el("mark", { className: kinds.join(" "), textContent: text }) : text);
    }
    return box;
  }

  function Browser(root, data) {
    const stages = data.stages.map((s) => s[0]);
    const last = stages[stages.length - 1];
    const both = stages.length === 2;
    const filters = [["all", "all", () => true], ["right", "right", (r) => r[last + "e"] === true],
      ["wrong", "wrong", (r) => r[last + "e"] === false]];
    if (both) {
      filters.push(["fixed", "fixed by tuning", (r) => r.be === false && r.ae === true],
        ["broken", "broken by tuning", (r) => r.be === true && r.ae === false],
        ["changed", "answer changed by tuning", (r) => "b" in r && "a" in r && r.b !== r.a]);
    }
    if (data.rows.some((r) => r[last] === "" || r.g.length === 0)) {
      filters.push(["abstained", "abstained", (r) => r[last] === ""],
        ["unanswerable", "no answer in the passage", (r) => r.g.length === 0]);
    }
    const state = { filter: "all", query: "", page: 0, shown: data.rows };
    const haystack = (r) => r._text || (r._text = [r.id, r.q, ...r.g, r.b || "", r.a || "",
      r.p >= 0 ? data.passages[r.p] : ""].join("\n").toLowerCase());

    const buttons = filters.map(([name, label, test]) => {
      const count = data.rows.filter(test).length;
      const button = el("button", { type: "button", textContent: `${label} (${count})` });
      button.dataset.filter = name;
      button.addEventListener("click", () => { state.filter = name; state.page = 0; update(); });
      return button;
    });
    const search = el("input", { type: "search", placeholder: "search ids, questions, answers, passages" });
    let timer = null;
    search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { state.query = search.value.trim().toLowerCase(); state.page = 0; update(); }, 120);
    });
    const count = el("span", { className: "qb-count" });
    const prev = el("button", { type: "button", textContent: "← previous", className: "qb-prev" });
    const next = el("button", { type: "button", textContent: "next →", className: "qb-next" });
    prev.addEventListener("click", () => { state.page--; update(); });
    next.addEventListener("click", () => { state.page++; update(); });
    const list = el("div", { className: "qb-rows" });
    const legend = el("p", {}, "Highlights: ", el("mark", { className: "gold", textContent: "gold answer" }), " ",
      el("mark", { className: "pred", textContent: "prediction (its first occurrence)" }), " ",
      el("mark", { className: "gold pred", textContent: "both" }),
      `. Right/wrong: jglue exact match ${both ? "after" : data.stages[0]} tuning.`);
    root.append(legend, el("div", { className: "qb-bar" }, ...buttons), el("div", { className: "qb-bar" },
      search, count, prev, next), list);

    function tag(r) {
      if (both && r.be === false && r.ae === true) return "fixed";
      if (both && r.be === true && r.ae === false) return "broken";
      return r[last + "e"] ? "right" : "wrong";
    }

    function details(r) {
      const passage = r.p >= 0 ? data.passages[r.p] : null;
      const columns = stages.filter((s) => s in r).map((s) => el("div", { className: "qb-col" },
        el("h4", { textContent: `${STAGE_NAMES[s]} tuning: ` }, el("span", { className: r[s] === "" ? "qb-abstained" : "", textContent: said(r[s]) }),
          ` (${r[s + "e"] ? "right" : "wrong"}, F1 ${r[s + "f"] === null ? "—" : r[s + "f"]})`),
        passage === null ? el("p", { textContent: "(passage not available)" })
          : highlighted(passage, r.gs || [], r[s])));
      return el("div", {}, el("p", { textContent: `gold: ${golds(r)}` }),
        el("div", { className: "qb-cols" }, ...columns));
    }

    function rowNode(r) {
      const answers = stages.filter((s) => s in r).map((s) => `${STAGE_NAMES[s]}: ${said(r[s])}`).join(" → ");
      const summary = el("summary", {}, el("span", { className: "qb-tag " + tag(r), textContent: tag(r) }),
        el("code", { textContent: r.id }), " ", r.q,
        el("div", { className: "qb-answers", textContent: `${answers}   gold: ${golds(r)}` }));
      const node = el("details", { className: "qb-row" }, summary);
      node.dataset.id = r.id;
      node.addEventListener("toggle", () => {
        if (node.open && node.childElementCount === 1) node.append(details(r));
      });
      return node;
    }

    function update() {
      const test = filters.find((f) => f[0] === state.filter)[2];
      state.shown = data.rows.filter((r) => test(r) && (!state.query || haystack(r).includes(state.query)));
      const pages = Math.max(1, Math.ceil(state.shown.length / data.pageSize));
      state.page = Math.min(Math.max(state.page, 0), pages - 1);
      const first = state.page * data.pageSize;
      const page = state.shown.slice(first, first + data.pageSize);
      list.replaceChildren(...page.map(rowNode));
      count.textContent = state.shown.length
        ? `questions ${first + 1}–${first + page.length} of ${state.shown.length} (page ${state.page + 1}/${pages})`
        : "no question matches";
      prev.disabled = state.page === 0;
      next.disabled = state.page >= pages - 1;
      for (const b of buttons) b.setAttribute("aria-pressed", String(b.dataset.filter === state.filter));
    }
    update();
  }

  for (const root of document.querySelectorAll(".qb")) {
    const source = document.getElementById(root.dataset.src);
    if (source) Browser(root, JSON.parse(source.textContent));
  }
})();
