"""Study tools beside the sessions: the student's notes (`/api/notes`), quizzes generated from the
course or from recent sessions (`/api/ai/quiz`) and the answers to them, mastery per course
section (`mastery`), session summaries (`/api/ai/summary`), class reports for teachers
(`/api/classes/{id}/report`), and how each course is taught: its tutor settings, set by its
teachers (`/api/courses/{course}/tutor`)."""
