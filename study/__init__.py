"""Study tools beside the sessions: the student's notes (`/api/notes`), quizzes generated from the
course or from recent sessions (`/api/ai/quiz`) and session summaries (`/api/ai/summary`)."""
