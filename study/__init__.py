"""Study tools beside the sessions: the student's notes (`/api/notes`), quizzes generated from the
course or from recent sessions (`/api/ai/quiz`), session summaries (`/api/ai/summary`), and how
each course is taught: its tutor settings, set by its teachers (`/api/courses/{course}/tutor`)."""
