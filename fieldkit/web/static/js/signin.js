// The sign-in page: nobody's session goes on on this tablet from here (it ended, or the kit
// was locked), so the offline key is forgotten at once, whichever way the tablet came (a
// page that found its session gone, or the kit's own redirect of a navigation). The sealed
// queue stays, to be sent when the same person signs in again (offline.js).
import { forgetKeys } from "./offline.js";

forgetKeys();
