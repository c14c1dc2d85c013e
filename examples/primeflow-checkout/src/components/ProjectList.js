// Lista de projetos.
(function (window) {
  'use strict';
  var ns = (window.PrimeFlow = window.PrimeFlow || { components: {} });
  ns.components.ProjectList = function ProjectList(props) {
    var list = window.document.createElement('ul');
    list.className = 'pf-projects';
    props.projects.forEach(function (project) {
      var item = window.document.createElement('li');
      item.textContent = project.name + ' (' + project.status.toLowerCase() + ')';
      list.appendChild(item);
    });
    if (!props.projects.length) list.textContent = 'Nenhum projeto ainda.';
    return list;
  };
})(window);
